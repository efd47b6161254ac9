// The login form works without this: it only stops a second submit while the first is sent.
const form = document.getElementById("login-form");
const button = document.getElementById("login-submit");
if (form && button) {
  form.addEventListener("submit", () => {
    button.disabled = true;
    button.textContent = "Logging in…";
  });
}

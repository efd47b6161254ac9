"""Print the test vectors for `fluxcb_core::legacy::django_url` as JSON.

Each vector is a string a caller could send in the legacy insert API's `url` field and what the
legacy service does with it: `{"input": s, "result": {"ok": stored}}` or
`{"input": s, "result": {"errors": [message, ...]}}`, the messages in DRF's order. The answers
come from the legacy project's own `CallbackSerializer().fields["url"].run_validation(s)` (field
validation needs no database); each is also checked against a plain
`rest_framework.serializers.URLField(max_length=2048)`, so the script fails if the two ever differ.

Run it with the CI venv's Python (Django and DRF from .ci/requirements.txt) from the repository
root:

    ~/.cache/fluxcb/venv/bin/python scripts/django_url_vectors.py \
        > crates/core/src/legacy/django_url_vectors.json

The legacy project is found through FLUXCB_LEGACY_DIR, else ../shared/legacy next to the
repository. `crates/cli/tests/legacy_format.rs` runs this script and compares its output with the
checked-in file.

Inputs with lone surrogates are left out: a Rust `&str` cannot hold them.
"""
import json
import os
import sys
import tempfile
from pathlib import Path


def legacy_dir() -> Path:
    env = os.environ.get("FLUXCB_LEGACY_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "legacy"


def long_host(length: int, label_char: str = "a") -> str:
    """A host name of exactly `length` characters: labels of at most 63, then `.com`."""
    host = "com"
    while len(host) < length:
        need = length - len(host) - 1  # the next label, after its dot
        size = min(63, need)
        if need - size == 1:  # would leave room for a dot and no label
            size -= 1
        host = label_char * size + "." + host
    assert len(host) == length, (len(host), length)
    return host


def inputs() -> list:
    path_2048 = "http://example.com/" + "a" * (2048 - len("http://example.com/"))
    cases = [
        # Schemes.
        "http://example.com",
        "https://example.com",
        "ftp://example.com",
        "ftps://example.com",
        "HTTP://EXAMPLE.COM",
        "HtTpS://Example.Com/Path",
        "FTP://example.com/pub/file.txt",
        "javascript:alert(1)",
        "javascript://example.com/%0aalert(1)",
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "example.com",
        "www.example.com/path",
        "//example.com",
        "://example.com",
        "ws://example.com",
        "wss://example.com/socket",
        "sftp://example.com",
        "mailto:someone@example.com",
        "data:text/plain,hello",
        "http:/example.com",
        "http:example.com",
        "http//example.com",
        "http:://example.com",
        "http://",
        "https://",
        "h ttp://example.com",
        "httpx://example.com",
        # localhost.
        "http://localhost",
        "http://localhost/",
        "http://localhost:8080/hooks",
        "http://LOCALHOST",
        "http://localhost.",
        "http://localhoſt",
        "http://localhost.localdomain",
        "http://my-localhost",
        "http://localhost-1",
        "http://localhost:65536",
        # IPv4.
        "http://127.0.0.1",
        "http://192.168.0.1:8080/p",
        "http://255.255.255.255",
        "http://0.0.0.0",
        "http://0.0.0.0:0",
        "http://256.1.1.1",
        "http://1.2.3.256",
        "http://300.300.300.300",
        "http://01.2.3.4",
        "http://1.02.3.4",
        "http://1.2.3.04",
        "http://127.1",
        "http://127.0.1",
        "http://2130706433",
        "http://0x7f.0.0.1",
        "http://1.2.3.4.5",
        "http://1.2.3",
        "http://1.2.3.4.",
        "http://10.0.0.1.example.com",
        "http://1.1.1.1.com",
        # IPv6.
        "http://[::1]",
        "http://[::1]:8080/",
        "http://[::]",
        "http://[2001:db8::1]",
        "http://[2001:DB8::1]/path",
        "http://[1:2:3:4:5:6:7:8]",
        "http://[1:2:3:4:5:6:7:8:9]",
        "http://[1:2:3:4:5:6:7::]",
        "http://[1::2::3]",
        "http://[:::]",
        "http://[12345::1]",
        "http://[gggg::1]",
        "http://[::ffff:192.0.2.1]",
        "http://[::ffff:192.0.2.256]",
        "http://[::ffff:192.0.2]",
        "http://[0000:0000:0000:0000:0000:0000:0000:0001]",
        "http://[0000:0000:0000:0000:0000:0000:0000:00001]",
        "http://[0000:0000:0000:0000:0000:0000:0000:0001]:443/x",
        "http://[0:0:0:0:0:0:255.255.255.255]",
        "http://[0:0:0:0:0:0:0:255.255.255.255]",
        "http://[fe80::1%eth0]",
        "http://[fe80::1%25eth0]",
        "http://[1.2.3.4]",
        "http://[v1.fe]",
        "http://[]",
        "http://::1",
        "http://[::1",
        "http://::1]",
        "http://[::1]x",
        "http://[::1]:99999",
        "http://[::1]:123456",
        "http://[::1]]",
        "http://[[::1]]",
        "http://user:pass@[::1]:8080/",
        # Brackets and odd characters in the user part.
        "http://[v1.x]@example.com",
        "http://[V1.x]@example.com",
        "http://[v1.x]@[::1]/",
        "http://[user]@example.com",
        "http://us[er@example.com",
        "http://a]b[c@example.com",
        "http://a?b@example.com",
        "http://?x@example.com",
        "http://a#b@example.com",
        "http://example.com\\@evil.com",
        "http://example.com:80@evil.com",
        "http://evil.com#@example.com",
        # IDN and unicode hosts.
        "http://bücher.de",
        "http://BÜCHER.DE",
        "http://例子.测试",
        "http://пример.рф/путь",
        "http://münchen.de/straße",
        "http://☃.net",
        "http://😀.com",
        "http://example.😀",
        "http://example.ｃｏｍ",
        "http://İstanbul.com",
        "http://exa\u2100mple.com",
        "http://example.com\uff0fpath",
        "http://us\u2105er@example.com",
        "http://user@exa\ufe13mple.com",
        "http://exa\ufe6bmple.com",
        "http://example.com/\u2100",
        "http://exa\u00admple.com",
        "http://e\u200bxample.com",
        # Punycode.
        "http://xn--bcher-kva.de",
        "http://xn--d1acpjx3f.xn--p1ai",
        "http://a.XN--P1AI",
        "http://a.xn--1",
        "http://a.xn--",
        "http://a.xn--" + "1" * 59,
        "http://a.xn--" + "1" * 60,
        "http://xn--.com",
        "http://a.xn--ı1",
        # Top-level domains and labels.
        "http://example.c",
        "http://example.co",
        "http://a.b",
        "http://a.bc",
        "http://example.123",
        "http://example.c0m",
        "http://example.com.",
        "http://example.com..",
        "http://example.com./path",
        "http://example.-com",
        "http://example.com-",
        "http://example.co-m",
        "http://-example.com",
        "http://example-.com",
        "http://ex-ample.com",
        "http://ex--ample.com",
        "http://a.b-.com",
        "http://a.-b.com",
        "http://a.b--c.com",
        "http://sub.example.com",
        "http://a.b.c.d.e.f.g.example.com",
        "http://example",
        "http://a",
        "http://1.com",
        "http://123.example.com",
        "http://example_underscore.com",
        "http://ex ample.com",
        "http://.example.com",
        "http://example..com",
        "http://e.x.a.m.p.l.e",
        "http://exam%70le.com",
        # User and password.
        "http://user:pass@example.com",
        "http://user@example.com",
        "http://user:@example.com",
        "http://:pass@example.com",
        "http://@example.com",
        "http://user:pa:ss@example.com",
        "http://us er@example.com",
        "http://user@pass@example.com",
        "http://user/name@example.com",
        "ftp://anonymous:guest@ftp.example.com/pub",
        "http://user:pass@127.0.0.1",
        "http://üser:päss@example.com",
        # Ports.
        "http://example.com:0",
        "http://example.com:80",
        "http://example.com:65535",
        "http://example.com:65536",
        "http://example.com:99999",
        "http://example.com:123456",
        "http://example.com:",
        "http://example.com:/",
        "http://example.com:abc",
        "http://example.com:80:80",
        "http://example.com:-1",
        "http://example.com:\u0663",
        "http://example.com:00080/x",
        # Paths, queries, fragments.
        "http://www.example.com:8080/path/to/page?query=string&x=1#anchor",
        "http://example.com/a b",
        "http://example.com/a%20b",
        "http://example.com?q=a b",
        "http://example.com?q=1",
        "http://example.com#frag ment",
        "http://example.com#frag",
        "http://example.com/a\u1680b",
        "http://example.com/a\u2009b",
        "http://example.com/a\u202fb",
        "http://example.com/a\x1fb",
        "http://example.com/path?q=1#f",
        "http://example.com/\u00a0",
        "http://example.com/a\u00a0b",
        "http://example.com/a\u3000b",
        "http://example.com/a\u2028b",
        "http://example.com/a\x1cb",
        "http://example.com/a\x0bb",
        "http://example.com/a\x0cb",
        "http://example.com/a\x85b",
        "http://example.com/a\x01b",
        "http://example.com/a\u200bb",
        "http://example.com/ünïcödé",
        "http://example.com/😀",
        "http://example.com/<script>alert(1)</script>",
        "http://example.com/@user",
        "http://example.com//double//slashes",
        "http://example.com/%",
        # Tabs, carriage returns and newlines.
        "http://exa\tmple.com",
        "http://example.com/a\tb",
        "http://example.com/a\rb",
        "http://example.com/\npath",
        "http://example.com\n",
        "\thttp://example.com\r\n",
        # Surrounding whitespace (trimmed) and characters that are not whitespace to Python.
        " http://example.com ",
        "\u3000http://example.com\u3000",
        "\u00a0http://example.com\u00a0",
        "\x1chttp://example.com\x1f",
        "\x0bhttp://example.com\x0c",
        "\u2029http://example.com\u2028",
        "\u200bhttp://example.com",
        "\x01http://example.com",
        "http://example.com\x7f",
        # Null characters.
        "http://example.com/\x00",
        "http://exa\x00mple.com",
        "http://example.com\x00",
        "\x00",
        "\x00http://example.com",
        # Empty and blank.
        "",
        " ",
        "\t\n",
        "\u3000",
        "\x1c\x1d",
        " \x00 ",
        # Lengths.
        path_2048,
        path_2048 + "a",
        " " + path_2048 + " ",
        "http://example.com/" + "é" * (2048 - len("http://example.com/")),
        "http://example.com/" + "é" * (2049 - len("http://example.com/")),
        "x" * 2049,
        "http://example.com/" + "a" * 3000 + "\x00",
        "http://" + "a" * 63 + ".com",
        "http://" + "a" * 64 + ".com",
        "http://sub." + "a" * 63 + ".com",
        "http://sub." + "a" * 64 + ".com",
        "http://example." + "a" * 63,
        "http://example." + "a" * 64,
        "http://" + long_host(253),
        "http://" + long_host(254),
        "http://" + long_host(253) + ".",
        "http://" + long_host(253) + ":8080/x",
        "http://user:pass@" + long_host(253),
        "http://" + long_host(240, "ü"),
        "http://" + long_host(200, "İ"),
        "http://" + long_host(120, "İ"),
        "http://" + long_host(300),
    ]
    assert len(cases) == len(set(cases)), "duplicate inputs"
    return cases


def answer(field, value):
    from rest_framework.exceptions import ValidationError

    try:
        return {"ok": field.run_validation(value)}
    except ValidationError as exc:
        return {"errors": [str(e) for e in exc.detail]}


def main() -> None:
    legacy = legacy_dir()
    if not (legacy / "callme" / "serializers.py").is_file():
        sys.exit(f"the legacy project is not at {legacy} (set FLUXCB_LEGACY_DIR)")
    sys.path.insert(0, str(legacy))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flux_legacy.settings")
    # The settings create LEGACY_HOME; field validation itself opens no database.
    with tempfile.TemporaryDirectory() as home:
        os.environ.setdefault("LEGACY_HOME", home)
        import django

        django.setup()
        from callme.serializers import CallbackSerializer
        from rest_framework import serializers

        real = CallbackSerializer().fields["url"]
        plain = serializers.URLField(max_length=2048)
        vectors = []
        for value in inputs():
            result = answer(real, value)
            assert result == answer(plain, value), f"the two fields differ on {value!r}"
            vectors.append({"input": value, "result": result})
    json.dump(vectors, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

fn main() -> std::process::ExitCode {
    fluxcb::main_entry()
}

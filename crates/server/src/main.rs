fn main() -> std::process::ExitCode {
    tokenwatch::main()
}

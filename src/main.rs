fn main() -> std::process::ExitCode {
    ialgebra::cli::main()
}

fn main() {
    // Operators read this line; the error chain says what was wrong (no backtrace).
    if let Err(error) = wagate::cli::main() {
        eprintln!("wagate: {error:#}");
        std::process::exit(1);
    }
}

fn main() {
    // Operators read this line; the error chain says what was wrong (no backtrace).
    match wagate::cli::main() {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("wagate: {error:#}");
            std::process::exit(1);
        }
    }
}

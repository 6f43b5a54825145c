fn main() {
    // Errors from the libraries (a failed media download, a dropped connection) would each
    // capture a backtrace under RUST_BACKTRACE=1, and logging one symbolises it: hundreds of
    // megabytes of debug info read for a routine warning, which a contact can trigger at
    // will. Panics keep their backtraces (RUST_BACKTRACE); RUST_LIB_BACKTRACE=1 brings the
    // others back. Set before any thread exists.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // Operators read this line; the error chain says what was wrong (no backtrace).
    match wagate::cli::main() {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("wagate: {error:#}");
            std::process::exit(1);
        }
    }
}

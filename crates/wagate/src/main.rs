fn main() -> anyhow::Result<()> {
    wagate::cli::main()
}

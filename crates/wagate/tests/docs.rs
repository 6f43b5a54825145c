//! Keeps `docs/configuration.md` true to `wagate serve`: every flag, environment variable
//! and default that `wagate serve --help` prints is in the page (a default in its flag's
//! table row), and every flag the page names is one `wagate serve` has.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// One option as `--help` prints it.
#[derive(Debug, Default)]
struct HelpOption {
    flag: String,
    env: Option<String>,
    default: Option<String>,
}

/// `wagate serve --help`, with no `WAGATE_*` variable of the test's own environment, whose
/// value clap would print as the option's current one.
fn serve_help() -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wagate"));
    command.args(["serve", "--help"]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WAGATE_") {
            command.env_remove(name);
        }
    }
    let output = command.output().expect("the wagate binary runs");
    assert!(output.status.success(), "wagate serve --help failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// The options of a clap help text: a line indented by a few spaces that starts with `-`
/// opens one (descriptions are indented further); the `[env: ...]` and `[default: ...]`
/// below it, on its description's line or lines of their own, belong to it.
fn options(help: &str) -> Vec<HelpOption> {
    let mut found: Vec<HelpOption> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if (1..=6).contains(&indent) && trimmed.starts_with('-') {
            let flag = flags_in(trimmed).into_iter().next().unwrap_or_else(|| panic!("no --flag in '{line}'"));
            found.push(HelpOption { flag, ..HelpOption::default() });
        } else if let Some(current) = found.last_mut() {
            if let Some(env) = bracketed(trimmed, "[env: ") {
                current.env = Some(env.split('=').next().unwrap_or(env).to_string());
            }
            if let Some(default) = bracketed(trimmed, "[default: ") {
                current.default = Some(default.to_string());
            }
        }
    }
    found
}

fn bracketed<'a>(line: &'a str, opening: &str) -> Option<&'a str> {
    let start = line.find(opening)? + opening.len();
    let end = line[start..].find(']')? + start;
    Some(&line[start..end])
}

/// Every `--name` in a text (not `---`, and not in the middle of a word).
fn flags_in(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut flags = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("--") {
        let start = at + found;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let name: String = text[start + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        let glued = before.is_some_and(|b| b == b'-' || b.is_ascii_alphanumeric());
        if !glued && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            flags.insert(format!("--{}", name.trim_end_matches('-')));
        }
        at = start + 2 + name.len();
    }
    flags
}

fn configuration_page() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The table row of a flag: the line that starts with `` | `--flag` ``.
fn row<'a>(page: &'a str, flag: &str) -> Option<&'a str> {
    let start = format!("| `{flag}`");
    page.lines().find(|line| line.starts_with(&start))
}

#[test]
fn every_serve_option_is_documented_with_its_variable_and_default() {
    let page = configuration_page();
    let options = options(&serve_help());
    assert!(options.iter().any(|o| o.flag == "--listen"), "the help parser found no --listen: {options:?}");
    let mut missing = Vec::new();
    for option in options.iter().filter(|o| o.flag != "--help") {
        let Some(row) = row(&page, &option.flag) else {
            missing.push(format!("{}: no table row starting with | `{}`", option.flag, option.flag));
            continue;
        };
        if let Some(env) = &option.env {
            if !row.contains(&format!("`{env}`")) {
                missing.push(format!("{}: its row does not name `{env}`", option.flag));
            }
        }
        if let Some(default) = &option.default {
            if !row.contains(&format!("`{default}`")) {
                missing.push(format!("{}: its row does not give the default `{default}`", option.flag));
            }
        }
    }
    assert!(missing.is_empty(), "docs/configuration.md is behind `wagate serve --help`:\n{}", missing.join("\n"));
}

#[test]
fn every_flag_in_the_configuration_page_exists() {
    let known: BTreeSet<String> = options(&serve_help()).into_iter().map(|o| o.flag).collect();
    let unknown: Vec<String> = flags_in(&configuration_page()).into_iter().filter(|f| !known.contains(f)).collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md names flags `wagate serve` does not have: {unknown:?} (known: {known:?})"
    );
}

#[test]
fn the_help_parser_reads_clap_output() {
    let help = "Options:\n      --listen <LISTEN>\n          Address\n\n          [env: WAGATE_LISTEN=]\n          [default: 127.0.0.1:3000]\n  -h, --help\n          Print help\n";
    let parsed = options(help);
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].flag, "--listen");
    assert_eq!(parsed[0].env.as_deref(), Some("WAGATE_LISTEN"));
    assert_eq!(parsed[0].default.as_deref(), Some("127.0.0.1:3000"));
    assert_eq!(parsed[1].flag, "--help");
    let inline = options("      --proxy <PROXY>\n          Outbound proxy [env: WAGATE_PROXY]\n");
    assert_eq!((inline[0].env.as_deref(), inline[0].default.as_deref()), (Some("WAGATE_PROXY"), None));
    let flags = flags_in("| `--a-b` | x --c, |---|---| not--this, `--d`");
    assert_eq!(flags, BTreeSet::from(["--a-b".to_string(), "--c".to_string(), "--d".to_string()]));
}

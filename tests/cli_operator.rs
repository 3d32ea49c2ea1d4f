//! The command line as a person meets it, through the binary without privileges: typo
//! suggestions, `-V` and the `help`/`version` words, `--help=false`, the `-f false` hint, and
//! the grouped help.

mod support;

use support::run_meshinit;

/// The last stderr line that is an error.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.contains("\terror\t"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
}

#[test]
fn typos_suggest_the_nearest_flag() {
    for (typo, meant) in [
        ("--dryrun", "--dry-run"),
        ("--dry_run", "--dry-run"),
        ("--envoy-prot=1", "--envoy-port"),
        ("--native-nftable", "--native-nftables"),
        ("--reconsile", "--reconcile"),
        ("--chek", "--check"),
        ("--log-output-level=default:debug", "--log_output_level"),
    ] {
        let out = run_meshinit(&[typo, "--ipv6=false"], &[]);
        assert_eq!(out.code, Some(2), "{typo}: {}", out.stderr);
        let name = typo.split('=').next().unwrap();
        let line = error_line(&out.stderr);
        assert!(
            line.contains(&format!("unknown flag: {name}; did you mean {meant}?")),
            "{typo}: {line}"
        );
    }
    let out = run_meshinit(&["trace", "--conn=out tcp dst=1.1.1.1:80", "--jsno"], &[]);
    assert_eq!(out.code, Some(2));
    assert!(error_line(&out.stderr).contains("did you mean --json?"));
    let out = run_meshinit(&["--bogus"], &[]);
    assert!(!error_line(&out.stderr).contains("did you mean"));
}

#[test]
fn a_switch_given_a_separate_value_is_told_to_use_equals() {
    for (args, hint) in [
        (
            &["-f", "false"][..],
            "-f is a switch: its value goes after '=', as -f=false",
        ),
        (&["--dry-run", "false"], "as --dry-run=false"),
        (&["-nf", "0"], "as -f=0"),
    ] {
        let out = run_meshinit(args, &[]);
        assert_eq!(out.code, Some(2), "{args:?}");
        let line = error_line(&out.stderr);
        assert!(line.contains("unexpected argument"), "{line}");
        assert!(line.contains(hint), "{args:?}: {line}");
    }
}

#[test]
fn version_and_help_words_and_short_v() {
    for args in [&["-V"][..], &["version"], &["--version=true"]] {
        let out = run_meshinit(args, &[]);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stdout,
            format!("meshinit {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
    for args in [
        &["help"][..],
        &["-h"],
        &["--help=1"],
        &["istio-iptables", "--help"],
    ] {
        let out = run_meshinit(args, &[]);
        assert_eq!(out.code, Some(0), "{args:?}");
        assert!(out.stdout.starts_with("meshinit: installs"), "{args:?}");
    }
    // Only as the first word: elsewhere it is a stray argument, as before.
    let out = run_meshinit(&["-n", "help"], &[]);
    assert_eq!(out.code, Some(2));
}

#[test]
fn help_false_asks_for_no_help() {
    let out = run_meshinit(&["--help=false", "-n", "--ipv6=false"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("* nat"),
        "a dry run, not help: {}",
        out.stdout
    );
    let out = run_meshinit(&["--help=maybe"], &[]);
    assert_eq!(out.code, Some(2));
    assert!(error_line(&out.stderr).contains("invalid value \"maybe\" for --help"));
}

#[test]
fn help_is_grouped_with_placeholders_and_examples() {
    let out = run_meshinit(&["--help"], &[]);
    let text = out.stdout;
    for needle in [
        "Capture (Istio's flags):\n",
        "How to run (Istio's flags):\n",
        "meshinit's own:\n",
        "trace's own (meshinit trace):\n",
        "  -p, --envoy-port <PORT>\n",
        "      --network-namespace <PATH>\n",
        "/run/netns/NAME",
        "/proc/PID/ns/net",
        "      --conn <SPEC>\n",
        "      --json\n",
        "Examples:\n",
    ] {
        assert!(text.contains(needle), "help lacks {needle:?}");
    }
    assert!(!text.contains("(default \"false\")"));
    let last_group = text.find("Accepted for compatibility, no effect:").unwrap();
    for flag in ["--vklog", "--log_rotate ", "--restore-format"] {
        assert!(text.find(flag).unwrap() > last_group, "{flag} comes last");
    }
}

#[test]
fn a_long_flag_with_one_dash_is_named() {
    // pflag reads `-dry-run` as `-d ry-run`; the value error says what was probably meant.
    let out = run_meshinit(&["-dry-run", "--ipv6=false"], &[]);
    assert_eq!(out.code, Some(2));
    assert!(error_line(&out.stderr).ends_with(
        "-dry-run was read as -d with the value \"ry-run\"; did you mean --dry-run? (long flags take two dashes)"
    ), "{}", out.stderr);
    let out = run_meshinit(&["-native-nftables"], &[]);
    assert!(error_line(&out.stderr)
        .contains("did you mean --native-nftables? (long flags take two dashes)"));
}

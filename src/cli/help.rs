//! What a person reads about the command line: the grouped `--help` text, and the hints added
//! to a command-line error (the nearest flag for a typo, `-f=false` for a switch given a
//! separate value). Built from the flag table, so a new flag shows up here by itself.

use super::{CliError, FlagSpec, Kind, Origin, ENV_ONLY, FLAGS, TRACE_FLAGS};

/// The help sections, in the order `--help` prints them.
const GROUPS: &[&str] = &[
    "Capture (Istio's flags)",
    "How to run (Istio's flags)",
    "meshinit's own",
    "Logging",
    "trace's own (meshinit trace)",
    "Accepted for compatibility, no effect",
];

/// Istio's flags that say how to run rather than what to capture.
const RUN_FLAGS: &[&str] = &[
    "dry-run",
    "run-validation",
    "iptables-probe-port",
    "probe-timeout",
    "skip-rule-apply",
    "network-namespace",
    "cni-mode",
    "reconcile",
    "cleanup-only",
    "force-apply",
    "native-nftables",
    "force-iptables-binary",
];

/// Which section of [`GROUPS`] a flag is shown in.
fn group(spec: &FlagSpec) -> usize {
    match spec.origin {
        Origin::Istio if RUN_FLAGS.contains(&spec.long) => 1,
        Origin::Istio => 0,
        Origin::Meshinit => 2,
        Origin::Logging if matches!(spec.long, "log_output_level" | "log_as_json") => 3,
        Origin::Logging | Origin::Removed => 5,
    }
}

/// The placeholder shown after a value flag's name (`--envoy-port <PORT>`).
fn placeholder(long: &str) -> &'static str {
    match long {
        l if l.ends_with("port") => "PORT",
        l if l.ends_with("ports") || l.ends_with("ports-exclude") => "PORTS",
        "proxy-uid" => "UIDS",
        "proxy-gid" => "GIDS",
        "istio-inbound-interception-mode" => "MODE",
        l if l.ends_with("interfaces") => "IFACES",
        l if l.contains("cidr") => "CIDRS",
        "istio-inbound-tproxy-mark" => "MARK",
        "istio-inbound-tproxy-route-table" => "TABLE",
        "probe-timeout" | "xtables-wait" | "timeout" | "retry-pause" => "DURATION",
        "retries" => "N",
        "network-namespace" => "PATH",
        "force-iptables-binary" => "VARIANT",
        "iptables-version" => "VERSION",
        "log_output_level" | "log_stacktrace_level" => "LEVELS",
        "ipv6" => "WHEN",
        "dns-servers" => "ADDRS",
        "exclude-inbound-sources" => "CIDRS",
        "exclude-outbound-ports-for-uids" => "ENTRIES",
        "backend" => "BACKEND",
        "conn" => "SPEC",
        _ => "VALUE",
    }
}

fn flag_line(
    short: Option<char>,
    long: &str,
    kind: Kind,
    help: &str,
    default: &str,
    env: &[&str],
) -> String {
    let names = match short {
        Some(s) => format!("-{s}, --{long}"),
        None => format!("    --{long}"),
    };
    let value = match kind {
        Kind::Bool => String::new(),
        Kind::Value => format!(" <{}>", placeholder(long)),
    };
    // A switch's default is only worth saying when it is on.
    let default = match (kind, default) {
        (_, "") | (Kind::Bool, "false") => String::new(),
        (Kind::Bool, _) => format!(" (default {default}; turn off with --{long}=false)"),
        (Kind::Value, _) => format!(" (default {default})"),
    };
    let env = if env.is_empty() {
        String::new()
    } else {
        format!(" [env {}]", env.join(", "))
    };
    format!("  {names}{value}\n        {help}{default}{env}\n")
}

/// The usage text for `--help`.
pub fn usage() -> String {
    let mut out = String::from(
        "meshinit: installs a service-mesh pod's traffic-capture rules (drop-in for istio-iptables)\n\n\
         Usage: meshinit [istio-iptables] [FLAGS]\n\
         \x20      meshinit explain [FLAGS]                      where each kind of traffic goes\n\
         \x20      meshinit trace [FLAGS] --conn SPEC [--json]   one connection's path, rule by rule\n\
         \x20      meshinit cni-install --bin-dir DIR --conf-dir DIR --plugin-config JSON_OR_@FILE [--conflist NAME] [--wait] [--log_as_json]\n\
         \x20                                                    install meshinit as a chained CNI plugin on a node\n\
         \x20      meshinit cni-dry-run < NETCONF                what CNI ADD would install for this pod (docs/cni-per-pod.md)\n\
         \x20      (with CNI_COMMAND set and no arguments, meshinit is the CNI plugin: docs/cni.md)\n\
         \x20      meshinit help | version | -h | -V\n\
         \x20      (SPEC: out|in tcp|udp dst=ADDR:PORT [src=ADDR[:PORT]] [uid=N] [gid=N] [iface=IF] [oif=IF] [mark=N])\n\n\
         Flags are pflag's: -p 15001, -p=15001, -p15001, --envoy-port 15001, --envoy-port=15001;\n\
         a switch is on as -n or --dry-run and takes a value only after '=' (--dry-run=false).\n\
         Lists are comma-separated. Command line > environment > default.\n",
    );
    for (index, title) in GROUPS.iter().enumerate() {
        out.push_str(&format!("\n{title}:\n"));
        if index == 4 {
            out.push_str(&flag_line(
                None,
                "conn",
                Kind::Value,
                "the connection to follow (SPEC above)",
                "",
                &[],
            ));
            out.push_str(&flag_line(
                None,
                "json",
                Kind::Bool,
                "print one JSON object",
                "",
                &[],
            ));
            continue;
        }
        for spec in FLAGS.iter().filter(|s| group(s) == index) {
            out.push_str(&flag_line(
                spec.short,
                spec.long,
                spec.kind,
                spec.help,
                spec.default,
                spec.env,
            ));
        }
    }
    out.push_str("\nEnvironment only:\n");
    for spec in ENV_ONLY {
        let default = if spec.default.is_empty() {
            String::new()
        } else {
            format!(" (default {})", spec.default)
        };
        out.push_str(&format!(
            "  {}\n        {}{default}\n",
            spec.name, spec.help
        ));
    }
    out.push_str(
        "\nExamples:\n\
         \x20 meshinit istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x \"\" -b '*' -d 15090,15021,15020 --dry-run\n\
         \x20     print what Istio's default istio-init arguments install (no privileges needed)\n\
         \x20 meshinit [same flags] --check\n\
         \x20     compare the live rules with this configuration, change nothing (exit 3 when they differ)\n\
         \x20 meshinit [same flags] --network-namespace=/run/netns/pod1\n\
         \x20     install in that network namespace\n\
         \x20 meshinit [same flags] --cleanup-only\n\
         \x20     remove what meshinit installs, nothing else\n\
         \x20 meshinit trace [same flags] --conn 'out tcp uid=1000 dst=10.96.0.10:80'\n\
         \x20     where that connection goes, rule by rule\n\
         \nExit codes: 0 success, 1 runtime failure, 2 invalid input, 3 --check found differences,\n\
         126 validation failed.\n",
    );
    out
}

/// Lower case without `-` and `_`: `--dry_run`, `--dryrun` and `--Dry-Run` all read `dryrun`.
fn normalized(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The long flag nearest to `name` (without dashes), if one is near enough to be a typo:
/// the same letters up to `-`/`_` and case, else the best Jaro-Winkler similarity above 0.85
/// (clap's suggestion measure, from the same crate, with a stricter bar as the table is long).
pub fn nearest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let wanted = normalized(name);
    if wanted.is_empty() {
        return None;
    }
    if let Some(exact) = candidates.iter().find(|c| normalized(c) == wanted) {
        return Some(exact);
    }
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&wanted, &normalized(c)), *c))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The long names a command line may use: every flag, `help`, `version`, and the sub-command's
/// own (`trace`'s `--conn`, `--json`).
fn long_names(subcommand: Option<&str>) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FLAGS.iter().map(|f| f.long).collect();
    names.extend(["help", "version"]);
    if subcommand == Some("trace") {
        names.extend(TRACE_FLAGS.iter().map(|(long, _)| *long));
    }
    names
}

/// Whether `arg` sets a switch without an inline value (`-f`, `-nf`, `--dry-run`), so that a
/// following `false` was meant as its value.
fn bare_switch(arg: &str, subcommand: Option<&str>) -> Option<String> {
    if let Some(long) = arg.strip_prefix("--") {
        let bool_flag = FLAGS.iter().any(|f| f.long == long && f.kind == Kind::Bool)
            || (subcommand == Some("trace")
                && TRACE_FLAGS
                    .iter()
                    .any(|(l, k)| *l == long && *k == Kind::Bool));
        return bool_flag.then(|| format!("--{long}"));
    }
    let last = arg.strip_prefix('-')?.chars().last()?;
    FLAGS
        .iter()
        .find(|f| f.short == Some(last) && f.kind == Kind::Bool)
        .map(|_| format!("-{last}"))
}

/// A command-line error as the user reads it: the error, then what was probably meant.
pub fn error_message(argv: &[String], error: &CliError) -> String {
    let rest = argv.get(1..).unwrap_or_default();
    let subcommand = rest
        .first()
        .map(String::as_str)
        .filter(|s| matches!(*s, "explain" | "trace"));
    let hint = match error {
        CliError::UnknownFlag(flag) => {
            let name = flag.trim_start_matches('-');
            nearest(name, &long_names(subcommand)).map(|n| format!("did you mean --{n}?"))
        }
        CliError::UnknownShorthand(_, group) => {
            // `-dry-run`: a long name written with one dash.
            let name = group.trim_start_matches('-');
            let name = name.split_once('=').map_or(name, |(n, _)| n);
            (name.chars().count() > 1)
                .then(|| nearest(name, &long_names(subcommand)))
                .flatten()
                .map(|n| format!("did you mean --{n}? (long flags take two dashes)"))
        }
        CliError::UnexpectedArgument(value) => {
            let before = rest
                .iter()
                .position(|a| a == value)
                .and_then(|i| i.checked_sub(1))
                .map(|i| rest[i].as_str());
            match before.and_then(|b| bare_switch(b, subcommand)) {
                Some(switch) if parse_bool(value) => Some(format!(
                    "{switch} is a switch: its value goes after '=', as {switch}={value}"
                )),
                _ if value.starts_with('-') => None,
                _ => long_names(subcommand)
                    .contains(&value.as_str())
                    .then(|| format!("did you mean --{value}?")),
            }
        }
        CliError::MissingValue(_) | CliError::BadValue(..) => None,
    };
    match hint {
        Some(hint) => format!("{error}; {hint} (see --help)"),
        None => format!("{error} (see --help)"),
    }
}

/// For an invalid value: a long flag written with one dash (`-dry-run` is pflag's `-d ry-run`),
/// named so the value error is not the only clue.
pub fn single_dash_hint(argv: &[String]) -> Option<String> {
    let rest = argv.get(1..).unwrap_or_default();
    let subcommand = rest
        .first()
        .map(String::as_str)
        .filter(|s| matches!(*s, "explain" | "trace"));
    let names = long_names(subcommand);
    rest.iter().find_map(|arg| {
        let body = arg.strip_prefix('-').filter(|b| !b.starts_with('-'))?;
        let name = body.split_once('=').map_or(body, |(n, _)| n);
        if name.chars().count() < 3 {
            return None;
        }
        let exact = names.iter().find(|n| normalized(n) == normalized(name))?;
        let first = body.chars().next()?;
        Some(format!(
            "{arg} was read as -{first} with the value {:?}; did you mean --{exact}? (long flags take two dashes)",
            &body[first.len_utf8()..]
        ))
    })
}

fn parse_bool(s: &str) -> bool {
    super::parse_go_bool(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(args: &[&str], error: CliError) -> String {
        let argv: Vec<String> = std::iter::once("meshinit")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        error_message(&argv, &error)
    }

    #[test]
    fn typos_get_the_nearest_flag() {
        let names = long_names(None);
        for (typo, meant) in [
            ("dryrun", "dry-run"),
            ("dry_run", "dry-run"),
            ("envoy-prot", "envoy-port"),
            ("native-nftable", "native-nftables"),
            ("reconsile", "reconcile"),
            ("chek", "check"),
            ("log-output-level", "log_output_level"),
            ("log-as-json", "log_as_json"),
            ("hlep", "help"),
        ] {
            assert_eq!(nearest(typo, &names), Some(meant), "--{typo}");
        }
        assert_eq!(nearest("bogus", &names), None);
        assert_eq!(nearest("conn", &names), None, "only trace takes --conn");
        assert_eq!(nearest("con", &long_names(Some("trace"))), Some("conn"));
    }

    #[test]
    fn hints_name_what_was_meant() {
        assert!(
            message(&["--dryrun"], CliError::UnknownFlag("--dryrun".into()))
                .contains("did you mean --dry-run?")
        );
        assert!(message(
            &["-dry-run"],
            CliError::UnknownShorthand('r', "-dry-run".into())
        )
        .contains("did you mean --dry-run? (long flags take two dashes)"));
        assert!(message(
            &["-f", "false"],
            CliError::UnexpectedArgument("false".into())
        )
        .contains("-f is a switch: its value goes after '=', as -f=false"));
        assert!(message(
            &["--dry-run", "false"],
            CliError::UnexpectedArgument("false".into())
        )
        .contains("as --dry-run=false"));
        assert!(
            message(&["-p", "1", "x"], CliError::UnexpectedArgument("x".into()))
                .ends_with("istio-iptables takes only flags (see --help)")
        );
    }

    #[test]
    fn help_groups_flags_with_placeholders() {
        let text = usage();
        assert!(text.contains("  -p, --envoy-port <PORT>\n"), "{text}");
        assert!(text.contains("    --network-namespace <PATH>\n"));
        assert!(text.contains("/run/netns/NAME"));
        assert!(text.contains("    --conn <SPEC>\n") && text.contains("    --json\n"));
        assert!(!text.contains("(default \"false\")") && !text.contains("(default false)"));
        assert!(text.contains("Examples:"));
        // Every flag has its line, with a placeholder when it takes a value.
        for spec in FLAGS {
            let names = match spec.short {
                Some(s) => format!("  -{s}, --{}", spec.long),
                None => format!("      --{}", spec.long),
            };
            let line = match spec.kind {
                Kind::Bool => format!("{names}\n"),
                Kind::Value => format!("{names} <{}>\n", placeholder(spec.long)),
            };
            assert_eq!(text.matches(&line).count(), 1, "{line}");
        }
        let no_effect = text.find("Accepted for compatibility").unwrap();
        assert!(text.find("--vklog").unwrap() > no_effect);
        assert!(text.find("--log_as_json").unwrap() < no_effect);
    }
}

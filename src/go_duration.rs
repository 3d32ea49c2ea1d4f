//! Durations written the way Go's `time.Duration.String()` writes them (`1m30s`, `1.5s`,
//! `300ms`): the form Istio's duration flags (`--probe-timeout`, `--timeout`) are given and
//! shown in, so a message quotes a duration as an operator would type it; and Go booleans as
//! `strconv.ParseBool` reads them, for the command line and the configuration alike.

use std::time::Duration;

/// `d` as Go prints a `time.Duration`: `0s`; below a second in the largest unit of `ns`,
/// `µs`, `ms` that keeps it at least 1 (`1.5µs`, `300ms`); from a second on as hours,
/// minutes and seconds with the leading zero units left out (`1.5s`, `2m0s`, `1h0m0s`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    match ns {
        0 => "0s".to_string(),
        1..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{}µs", decimal(ns, 3)),
        1_000_000..=999_999_999 => format!("{}ms", decimal(ns, 6)),
        _ => {
            let secs = ns / 1_000_000_000;
            let (h, m) = (secs / 3600, secs / 60 % 60);
            let mut out = String::new();
            if h > 0 {
                out.push_str(&format!("{h}h"));
            }
            if h > 0 || m > 0 {
                out.push_str(&format!("{m}m"));
            }
            out.push_str(&decimal(ns % 60_000_000_000, 9));
            out.push('s');
            out
        }
    }
}

/// `n` divided by 10^`digits`, with as many decimals as it needs (none when whole).
fn decimal(n: u128, digits: u32) -> String {
    let unit = 10u128.pow(digits);
    let (whole, rest) = (n / unit, n % unit);
    if rest == 0 {
        return whole.to_string();
    }
    let fraction = format!("{rest:0width$}", width = digits as usize);
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// Parses a Go boolean as `strconv.ParseBool` does.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true/false, 1/0, t/f)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_prints_them() {
        // Each pair is Go's own output for the duration (fmt.Println(time.Duration(n))).
        let cases: [(u64, &str); 14] = [
            (0, "0s"),
            (1, "1ns"),
            (999, "999ns"),
            (1_500, "1.5µs"),
            (1_000_000, "1ms"),
            (300_000_000, "300ms"),
            (1_500_000, "1.5ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (1_000_000_001, "1.000000001s"),
            (90_000_000_000, "1m30s"),
            (120_000_000_000, "2m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_661_500_000_000, "1h1m1.5s"),
        ];
        for (ns, go) in cases {
            assert_eq!(go_duration(Duration::from_nanos(ns)), go, "{ns} ns");
        }
    }
}

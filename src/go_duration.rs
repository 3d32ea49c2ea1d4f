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

/// The largest duration Go has, `2562047h47m16.854775807s`, in nanoseconds (`1<<63 - 1`).
const GO_MAX_NANOS: u64 = i64::MAX as u64;

/// Parses a duration as Go's `time.ParseDuration` does (`5s`, `1m30s`, `500ms`, `1.5h`,
/// `1h2m3.5s`, up to `2562047h47m16.854775807s`), in whole nanoseconds as Go computes them:
/// what Go accepts is accepted with Go's value, what Go rejects (no unit, an unknown unit,
/// overflow) is rejected. A negative duration, which Go accepts, is refused: no setting here
/// takes one.
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    let err = |why: &str| format!("{s:?} is not a duration ({why}; like 5s, 500ms, 1m30s)");
    let mut rest = s;
    if let Some(after) = rest.strip_prefix('-') {
        if after != "0" {
            return Err(format!(
                "{s:?} is negative; give a duration like 5s, 500ms, 1m30s"
            ));
        }
        rest = after;
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err("empty"));
    }
    // u128 holds any sum of in-range terms without wrapping; Go's limit is checked per step.
    let limit = u128::from(GO_MAX_NANOS) + 1;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let int_len = digits(rest);
        let (int_text, after) = rest.split_at(int_len);
        let mut whole: u128 = 0;
        for d in int_text.bytes() {
            whole = whole * 10 + u128::from(d - b'0');
            if whole > limit {
                return Err(err("out of range"));
            }
        }
        rest = after;
        // The fraction's digits beyond what 63 bits hold are read and dropped, as Go does.
        let (mut frac, mut scale, mut frac_digits) = (0u128, 1u128, 0usize);
        if let Some(after) = rest.strip_prefix('.') {
            frac_digits = digits(after);
            for d in after[..frac_digits].bytes() {
                if frac * 10 + u128::from(d - b'0') > limit {
                    continue;
                }
                frac = frac * 10 + u128::from(d - b'0');
                scale *= 10;
            }
            rest = &after[frac_digits..];
        }
        if int_len == 0 && frac_digits == 0 {
            return Err(err("a number must come before each unit"));
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("a unit is missing")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        let mut term = whole * unit;
        if frac > 0 {
            // Go: v += uint64(float64(f) * (float64(unit) / scale)).
            term += (frac as f64 * (unit as f64 / scale as f64)) as u128;
        }
        total += term;
        if term > limit || total > limit {
            return Err(err("out of range"));
        }
    }
    if total > u128::from(GO_MAX_NANOS) {
        return Err(err("out of range"));
    }
    Ok(std::time::Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_parses_them() {
        let ns = |s| parse_go_duration(s).map(|d| d.as_nanos());
        // Go's own answers (time.ParseDuration).
        assert_eq!(ns("9223372036s"), Ok(9_223_372_036_000_000_000));
        assert_eq!(
            ns("2562047h47m16.854775807s"),
            Ok(9_223_372_036_854_775_807)
        );
        assert_eq!(ns("9223372036854775807ns"), Ok(9_223_372_036_854_775_807));
        assert_eq!(ns("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(ns("1h2m3.5s"), Ok(3_723_500_000_000));
        assert_eq!(ns(".5s"), Ok(500_000_000));
        assert_eq!(ns("5.s"), Ok(5_000_000_000));
        assert_eq!(ns("+5s"), Ok(5_000_000_000));
        assert_eq!(ns("1µs"), Ok(1_000));
        assert_eq!(ns("0"), Ok(0));
        assert_eq!(ns("-0"), Ok(0));
        assert_eq!(ns("0.000000001s"), Ok(1));
        assert_eq!(ns("1.0000000000000000000001s"), Ok(1_000_000_000));
        // What Go rejects: overflow just past the largest, no unit, no number, unknown unit.
        for bad in [
            "9223372036854775808ns",
            "2562047h47m16.854775808s",
            "9223372037s",
            "2562048h",
            "5",
            "",
            "s",
            ".s",
            "5x",
            "1..2s",
            "-1s",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

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

//! meshinit's logger: human-readable lines or JSON lines on stderr, filtered by level. Passed
//! explicitly rather than global, so each run's settings are plain data.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// How much to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything, including each tool's input.
    Debug,
    /// The default: what was decided and done.
    Info,
    /// Only what may need attention.
    Warn,
    /// Only failures (Istio's `fatal` maps here too).
    Error,
    /// Nothing.
    None,
}

/// Where and how log lines go.
#[derive(Clone, Copy, Debug)]
pub struct Log {
    /// Lines below this level are dropped.
    pub level: LogLevel,
    /// JSON lines (`--log_as_json`) instead of text.
    pub json: bool,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            level: LogLevel::Info,
            json: false,
        }
    }
}

impl Log {
    /// Logs at debug level.
    pub fn debug(&self, msg: &str) {
        self.emit(LogLevel::Debug, msg);
    }
    /// Logs at info level.
    pub fn info(&self, msg: &str) {
        self.emit(LogLevel::Info, msg);
    }
    /// Logs at warn level.
    pub fn warn(&self, msg: &str) {
        self.emit(LogLevel::Warn, msg);
    }
    /// Logs at error level.
    pub fn error(&self, msg: &str) {
        self.emit(LogLevel::Error, msg);
    }

    /// Logs `msg` with structured data: with `--log_as_json` the line carries `fields` under
    /// `key` beside `msg` (so a log pipeline can query it); as text only `msg` is printed.
    pub fn with_fields(&self, level: LogLevel, msg: &str, key: &str, fields: &serde_json::Value) {
        if !self.enabled(level) {
            return;
        }
        let line = if self.json {
            format_json_line(SystemTime::now(), level, msg, Some((key, fields)))
        } else {
            format_line(false, SystemTime::now(), level, msg)
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    /// Whether a line at `level` would be printed.
    pub fn enabled(&self, level: LogLevel) -> bool {
        level >= self.level && self.level != LogLevel::None
    }

    fn emit(&self, level: LogLevel, msg: &str) {
        if !self.enabled(level) {
            return;
        }
        let line = format_line(self.json, SystemTime::now(), level, msg);
        // Logging must never fail the run; a closed stderr loses the line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::None => "none",
    }
}

/// One log line, newline included.
pub fn format_line(json: bool, now: SystemTime, level: LogLevel, msg: &str) -> String {
    let time = rfc3339(now);
    let level = level_name(level);
    if json {
        format!(
            "{{\"time\":\"{time}\",\"level\":\"{level}\",\"msg\":{}}}\n",
            json_string(msg)
        )
    } else {
        // Multi-line messages stay readable: continuation lines are indented.
        let msg = msg.replace('\n', "\n    ");
        format!("{time}\t{level}\t{msg}\n")
    }
}

/// One JSON line with an extra structured field.
fn format_json_line(
    now: SystemTime,
    level: LogLevel,
    msg: &str,
    field: Option<(&str, &serde_json::Value)>,
) -> String {
    let mut line = format_line(true, now, level, msg);
    if let Some((key, value)) = field {
        // `format_line` ends the object with "}\n"; the field goes before it.
        line.truncate(line.len() - 2);
        line.push_str(&format!(",{}:{value}}}\n", json_string(key)));
    }
    line
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// UTC time as `2026-11-25T20:42:46.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_639_366_123);
        assert_eq!(rfc3339(t), "2026-11-25T20:42:46.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn json_lines_escape_everything() {
        let line = format_line(true, UNIX_EPOCH, LogLevel::Warn, "a \"b\"\n\\c\u{1}");
        assert_eq!(
            line,
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"level\":\"warn\",\"msg\":\"a \\\"b\\\"\\n\\\\c\\u0001\"}\n"
        );
    }

    #[test]
    fn json_lines_carry_a_structured_field() {
        let fields = serde_json::json!({"exit_code": 0, "families": ["ipv4"]});
        let line = format_json_line(
            UNIX_EPOCH,
            LogLevel::Info,
            "summary",
            Some(("summary", &fields)),
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["summary"], fields);
        assert_eq!(parsed["msg"], "summary");
        assert!(line.ends_with("}\n"));
    }

    #[test]
    fn text_lines_indent_continuations() {
        let line = format_line(false, UNIX_EPOCH, LogLevel::Info, "one\ntwo");
        assert_eq!(line, "1970-01-01T00:00:00.000Z\tinfo\tone\n    two\n");
    }
}

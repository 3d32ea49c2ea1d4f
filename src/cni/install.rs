//! `meshinit cni-install`: installing meshinit as a chained plugin on a node, as Istio's
//! install-cni does (what examples/cni-daemonset.yaml runs): the flags, the choice of the
//! node's conflist, how meshinit's entry stands in it, and the edits that append it (replacing
//! an older one) or take it out, spliced into the file's text so every other byte of the CNI's
//! file stays as it was. Pure; the files are read, written and watched by
//! `sys::cni_files`, and `cni::node` decides when.

use std::path::PathBuf;

use serde_json::Value;

/// What `cni-install` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    /// Where the node's runtime looks for plugins (`/opt/cni/bin`, mounted).
    pub bin_dir: PathBuf,
    /// Where the node's conflists are (`/etc/cni/net.d`, mounted).
    pub conf_dir: PathBuf,
    /// The conflist to edit (a file name in `conf_dir`); default: the first `.conflist` in
    /// name order, the one the runtime uses.
    pub conflist: Option<String>,
    /// meshinit's entry: a JSON object with `"type": "meshinit"` and meshinit's fields.
    pub plugin: Value,
    /// Stay running, keeping the entry in the runtime's conflist as the node's files change,
    /// until SIGTERM; then take the entry out again (a DaemonSet's container).
    pub wait: bool,
    /// Log lines as JSON objects (`--log_as_json`, Istio's spelling for its install-cni).
    pub log_as_json: bool,
}

/// The usage line, for errors.
pub const USAGE: &str = "usage: meshinit cni-install --bin-dir DIR --conf-dir DIR --plugin-config JSON_OR_@FILE [--conflist NAME] [--wait] [--log_as_json]";

/// Parses `cni-install`'s flags (after the sub-command); `read` loads `@FILE` values.
pub fn parse(
    args: &[String],
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Install, String> {
    let mut bin_dir = None;
    let mut conf_dir = None;
    let mut conflist = None;
    let mut plugin = None;
    let mut wait = false;
    let mut log_as_json = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if name == "--wait" && inline.is_none() {
            wait = true;
            continue;
        }
        if name == "--log_as_json" && inline.is_none() {
            log_as_json = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        match name {
            "--bin-dir" => bin_dir = Some(PathBuf::from(value()?)),
            "--conf-dir" => conf_dir = Some(PathBuf::from(value()?)),
            "--conflist" => conflist = Some(value()?),
            "--plugin-config" => plugin = Some(value()?),
            _ => return Err(format!("unknown argument {arg:?}; {USAGE}")),
        }
    }
    let missing = |what: &str| format!("{what} is required; {USAGE}");
    let text = plugin.ok_or_else(|| missing("--plugin-config"))?;
    let text = match text.strip_prefix('@') {
        Some(path) => read(path)?,
        None => text,
    };
    let mut plugin: Value =
        serde_json::from_str(&text).map_err(|e| format!("--plugin-config is not JSON: {e}"))?;
    check_plugin(&plugin)?;
    super::pod::declare_capability(&mut plugin);
    Ok(Install {
        bin_dir: bin_dir.ok_or_else(|| missing("--bin-dir"))?,
        conf_dir: conf_dir.ok_or_else(|| missing("--conf-dir"))?,
        conflist,
        plugin,
        wait,
        log_as_json,
    })
}

/// The entry must name meshinit; its fields are checked as `ADD` checks them by the caller.
fn check_plugin(plugin: &Value) -> Result<(), String> {
    let Some(object) = plugin.as_object() else {
        return Err("--plugin-config must be a JSON object".to_string());
    };
    if object.get("type").and_then(Value::as_str) != Some("meshinit") {
        return Err(
            r#"--plugin-config needs "type": "meshinit" (the binary's name in the bin directory)"#
                .to_string(),
        );
    }
    Ok(())
}

/// Whether the runtime reads a file of this name as a network configuration (libcni's
/// extensions). Other names in the conf directory (temporary files, meshinit's hidden ones
/// among them) are ignored, by the choice below and by the watch.
pub fn is_config_name(name: &str) -> bool {
    name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json")
}

/// Which configuration the runtime uses, from the conf directory's file names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum First {
    /// The first configuration in name order is this `.conflist`: meshinit's entry goes there.
    Conflist(String),
    /// The first configuration is a single-plugin file (`.conf`, `.json`), which cannot chain.
    NotChainable(String),
    /// No configuration yet (the cluster's CNI has not written one).
    None,
}

/// The configuration the runtime uses: the first in name order (runtimes take the first
/// configuration file in name order; a single-plugin `.conf` cannot chain).
pub fn first_config(names: &[String]) -> First {
    let first = names.iter().filter(|n| is_config_name(n)).min();
    match first {
        Some(name) if name.ends_with(".conflist") => First::Conflist(name.to_string()),
        Some(name) => First::NotChainable(name.to_string()),
        None => First::None,
    }
}

impl First {
    /// The `.conflist`, or the reason there is none to edit.
    pub fn conflist(self) -> Result<String, String> {
        match self {
            First::Conflist(name) => Ok(name),
            First::NotChainable(name) => Err(format!(
                "the node's first CNI configuration {name} is not a .conflist: a single plugin cannot be chained (name one with --conflist)"
            )),
            First::None => Err("no CNI configuration in the conf directory yet (the cluster's CNI writes one; retry)".to_string()),
        }
    }
}

/// How meshinit's entry stands in a conflist, compared with the entry `cni-install` was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Exactly one meshinit entry, this one, last: nothing to write.
    InPlace,
    /// No meshinit entry (a CNI rewrote the file without it, or it was never added).
    Missing,
    /// One meshinit entry with other settings (an older install).
    Differs,
    /// This entry, but not last in the chain (it must run after the interface plugins).
    NotLast,
    /// More than one meshinit entry.
    Several(usize),
}

impl Entry {
    /// For log lines: how the conflist was found.
    pub fn describe(&self) -> String {
        match self {
            Entry::InPlace => "meshinit's entry is in place".to_string(),
            Entry::Missing => "it has no meshinit entry".to_string(),
            Entry::Differs => "its meshinit entry has other settings".to_string(),
            Entry::NotLast => "meshinit's entry is not last".to_string(),
            Entry::Several(n) => format!("it has {n} meshinit entries"),
        }
    }

    /// For "X had …".
    pub fn describe_short(&self) -> String {
        match self {
            Entry::InPlace => "meshinit's entry".to_string(),
            Entry::Missing => "no meshinit entry".to_string(),
            Entry::Differs => "a meshinit entry with other settings".to_string(),
            Entry::NotLast => "meshinit's entry not last".to_string(),
            Entry::Several(n) => format!("{n} meshinit entries"),
        }
    }
}

fn is_meshinit(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some("meshinit")
}

/// The conflist's `plugins` array as it stands in the text: where its brackets are and each
/// entry's byte span with the entry parsed. Edits splice text at these offsets, so every byte
/// of the CNI's file outside meshinit's entry stays as the CNI wrote it (its key order, number
/// spellings such as `1e3` or integers beyond 64 bits, escapes, spacing).
struct Plugins {
    /// The offset of `[`.
    open: usize,
    /// Each entry: its span (start, end) and its value.
    entries: Vec<(usize, usize, Value)>,
}

/// Locates the `plugins` array in `conflist` (an error says what is wrong with the file).
fn locate(conflist: &str) -> Result<Plugins, String> {
    // serde_json decides validity; the scan below then only has to find spans in valid JSON.
    let list: Value = serde_json::from_str(conflist).map_err(|e| format!("not JSON: {e}"))?;
    if !list.get("plugins").is_some_and(Value::is_array) {
        return Err("no \"plugins\" list".to_string());
    }
    let mut scan = Scan {
        text: conflist.as_bytes(),
        at: 0,
    };
    scan.blank();
    scan.at += 1; // the top-level `{` (an object: it has "plugins")
    let mut found = None;
    loop {
        scan.blank();
        if scan.peek() == b'}' {
            break;
        }
        let key_start = scan.at;
        scan.value();
        let key: String = serde_json::from_str(&conflist[key_start..scan.at])
            .map_err(|e| format!("not JSON: {e}"))?;
        scan.blank();
        scan.at += 1; // `:`
        scan.blank();
        let value_start = scan.at;
        scan.value();
        // A repeated key: the last one counts, as for serde_json and Go's encoding/json.
        if key == "plugins" {
            found = Some(value_start);
        }
        scan.blank();
        if scan.peek() == b',' {
            scan.at += 1;
        }
    }
    let open = found.ok_or_else(|| "no \"plugins\" list".to_string())?;
    scan.at = open + 1;
    let mut entries = Vec::new();
    loop {
        scan.blank();
        if scan.peek() == b']' {
            break;
        }
        let start = scan.at;
        scan.value();
        let value = serde_json::from_str(&conflist[start..scan.at])
            .map_err(|e| format!("not JSON: {e}"))?;
        entries.push((start, scan.at, value));
        scan.blank();
        if scan.peek() == b',' {
            scan.at += 1;
        }
    }
    Ok(Plugins { open, entries })
}

/// A cursor over JSON text already known to be valid.
struct Scan<'a> {
    text: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> u8 {
        self.text.get(self.at).copied().unwrap_or(0)
    }

    /// Past JSON's whitespace.
    fn blank(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    /// Past one value (string, object, array or scalar) starting here.
    fn value(&mut self) {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                b'"' => self.string(),
                b'{' | b'[' => {
                    depth += 1;
                    self.at += 1;
                }
                b'}' | b']' => {
                    depth -= 1;
                    self.at += 1;
                }
                _ if depth > 0 => self.at += 1,
                // A scalar: up to the next delimiter.
                _ => {
                    while !matches!(
                        self.peek(),
                        0 | b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                    ) {
                        self.at += 1;
                    }
                }
            }
            if depth == 0 {
                return;
            }
        }
    }

    /// Past a string starting at its `"`.
    fn string(&mut self) {
        self.at += 1;
        loop {
            match self.peek() {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return;
                }
                _ => self.at += 1,
            }
        }
    }
}

/// How `plugin` stands in `conflist`'s text (an error when the text is not a conflist).
pub fn entry(conflist: &str, plugin: &Value) -> Result<Entry, String> {
    let plugins: Vec<Value> = locate(conflist)?
        .entries
        .into_iter()
        .map(|(_, _, value)| value)
        .collect();
    let ours: Vec<usize> = (0..plugins.len())
        .filter(|&i| is_meshinit(&plugins[i]))
        .collect();
    Ok(match ours.as_slice() {
        [] => Entry::Missing,
        [i] if plugins[*i] != *plugin => Entry::Differs,
        [i] if *i + 1 != plugins.len() => Entry::NotLast,
        [_] => Entry::InPlace,
        several => Entry::Several(several.len()),
    })
}

/// `conflist` with the meshinit entries cut out, each with one separator (the comma and the
/// blanks before it when last, else the ones after it), so that cutting an entry
/// [`with_plugin`] appended restores the text it was appended to byte for byte.
fn cut_meshinit(conflist: &str) -> Result<(String, usize), String> {
    let mut text = conflist.to_string();
    let mut cut = 0;
    // One at a time from the last, locating again after each cut (the offsets move).
    loop {
        let plugins = locate(&text)?;
        let entries = &plugins.entries;
        let Some(i) = entries.iter().rposition(|(_, _, v)| is_meshinit(v)) else {
            return Ok((text, cut));
        };
        let range = if i + 1 < entries.len() {
            entries[i].0..entries[i + 1].0
        } else if i > 0 {
            entries[i - 1].1..entries[i].1
        } else {
            entries[i].0..entries[i].1
        };
        text.replace_range(range, "");
        cut += 1;
    }
}

/// The conflist with meshinit's entry appended last (older meshinit entries cut first), the
/// rest of the text untouched: the entry follows the last one after a comma and the blanks
/// that separate the entries already there (those after `[` when there is one), and is
/// indented as they are when those blanks hold a line break.
pub fn with_plugin(conflist: &str, plugin: &Value) -> Result<String, String> {
    let (text, _) = cut_meshinit(conflist)?;
    let plugins = locate(&text)?;
    let entries = &plugins.entries;
    let (at, lead, blank) = match entries.as_slice() {
        [] => (plugins.open + 1, "", ""),
        [only] => (only.1, ",", &text[plugins.open + 1..only.0]),
        [.., before, last] => {
            let comma = before.1 + text[before.1..last.0].find(',').unwrap_or(0);
            (last.1, ",", &text[comma + 1..last.0])
        }
    };
    let entry = match blank.rfind('\n') {
        Some(newline) => {
            let indent = &blank[newline + 1..];
            serde_json::to_string_pretty(plugin)
                .unwrap_or_default()
                .replace('\n', &format!("\n{indent}"))
        }
        None => serde_json::to_string(plugin).unwrap_or_default(),
    };
    let mut out = text.clone();
    out.insert_str(at, &format!("{lead}{blank}{entry}"));
    Ok(out)
}

/// The conflist with meshinit's entries taken out (uninstall); `None` when it has none, so
/// nothing is written.
pub fn without_plugin(conflist: &str) -> Result<Option<String>, String> {
    let (text, cut) = cut_meshinit(conflist)?;
    Ok((cut > 0).then_some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_a_checked_plugin_entry() {
        let no_file = |p: &str| Err(format!("no {p}"));
        let ok = parse(
            &args(&[
                "--bin-dir=/host/opt/cni/bin",
                "--conf-dir",
                "/host/etc/cni/net.d",
                "--plugin-config",
                r#"{"type":"meshinit","istio_iptables_args":["-p","15001"]}"#,
                "--wait",
                "--log_as_json",
            ]),
            &no_file,
        )
        .unwrap();
        assert_eq!(ok.bin_dir, PathBuf::from("/host/opt/cni/bin"));
        assert!(ok.wait && ok.log_as_json);
        let err = parse(
            &args(&[
                "--bin-dir=/b",
                "--conf-dir=/c",
                "--plugin-config",
                r#"{"type":"bridge"}"#,
            ]),
            &no_file,
        )
        .unwrap_err();
        assert!(err.contains("\"type\": \"meshinit\""), "{err}");
        assert!(parse(&args(&["--bin-dir=/b"]), &no_file)
            .unwrap_err()
            .contains("--plugin-config"));
    }

    #[test]
    fn the_first_conflist_gets_meshinit_last_once() {
        let names = args(&["20-b.conflist", "10-a.conflist", "README", "99-z.conf"]);
        assert_eq!(
            first_config(&names),
            First::Conflist("10-a.conflist".into())
        );
        let names = args(&["05-x.conf", "10-a.conflist", ".05-a.conflist.meshinit-tmp"]);
        assert_eq!(
            first_config(&names),
            First::NotChainable("05-x.conf".into())
        );
        assert!(first_config(&names).conflist().is_err());
        assert_eq!(first_config(&[]), First::None);
        let list = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"ptp"},{"type":"meshinit","old":1},{"type":"portmap"}]}"#;
        let plugin = serde_json::json!({"type": "meshinit", "log_level": "info"});
        let edited: Value = serde_json::from_str(&with_plugin(list, &plugin).unwrap()).unwrap();
        let types: Vec<&str> = edited["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ptp", "portmap", "meshinit"]);
        assert_eq!(edited["plugins"][2], plugin);
        let removed = without_plugin(&edited.to_string()).unwrap().unwrap();
        let removed_list: Value = serde_json::from_str(&removed).unwrap();
        assert_eq!(removed_list["plugins"].as_array().unwrap().len(), 2);
        assert_eq!(
            without_plugin(&removed).unwrap(),
            None,
            "nothing to take out"
        );
    }

    #[test]
    fn the_entry_is_in_place_only_once_last_and_equal() {
        let plugin = serde_json::json!({"type": "meshinit", "log_level": "info"});
        let list = |plugins: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"k8s","plugins":[{plugins}]}}"#)
        };
        let ours = r#"{"log_level":"info","type":"meshinit"}"#;
        let cases = [
            (list(&format!(r#"{{"type":"ptp"}},{ours}"#)), Entry::InPlace),
            (list(r#"{"type":"ptp"}"#), Entry::Missing),
            (
                list(r#"{"type":"ptp"},{"type":"meshinit"}"#),
                Entry::Differs,
            ),
            (list(&format!(r#"{ours},{{"type":"ptp"}}"#)), Entry::NotLast),
            (
                list(&format!(r#"{ours},{{"type":"ptp"}},{ours}"#)),
                Entry::Several(2),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(entry(&text, &plugin).unwrap(), want, "{text}");
            let edited = with_plugin(&text, &plugin).unwrap();
            assert_eq!(entry(&edited, &plugin).unwrap(), Entry::InPlace, "{edited}");
        }
        assert!(entry("{\"plugins\":[", &plugin)
            .unwrap_err()
            .contains("not JSON"));
        assert!(entry("{}", &plugin).unwrap_err().contains("plugins"));
    }

    #[test]
    fn the_entry_is_spliced_into_the_text_and_cut_out_to_the_byte() {
        let plugin = serde_json::json!({"type": "meshinit", "n": 1});
        for original in [
            r#"{"plugins":[]}"#,
            r#"{"plugins":[ ]}"#,
            r#"{"plugins":[{"type":"ptp"}]}"#,
            "{\"plugins\" : [\n    {\"type\":\"ptp\",\"mtu\":1e3}\n  ]\n}\n",
            "{\"a\":[1,2],\"plu\\u0067ins\":[ {\"type\":\"a\"} ,\n\t{\"type\":\"b\"}\t] , \"z\":\"]\\\"\"}",
        ] {
            let with = with_plugin(original, &plugin).unwrap();
            assert_eq!(entry(&with, &plugin).unwrap(), Entry::InPlace, "{with}");
            assert_eq!(without_plugin(&with).unwrap().as_deref(), Some(original));
            assert_eq!(with_plugin(&with, &plugin).unwrap(), with, "{with}");
        }
        // Indented as the entries before it, on their own lines.
        let pretty = "{\"plugins\": [\n    {\"type\": \"ptp\"},\n    {\"type\": \"portmap\"}\n]}";
        let with = with_plugin(pretty, &plugin).unwrap();
        assert!(
            with.contains("},\n    {\n      \"n\": 1,\n      \"type\": \"meshinit\"\n    }\n]}"),
            "{with}"
        );
        // Entries elsewhere in the chain (an older install, two of them) are cut with one
        // separator each; the rest stays.
        let old = r#"{"plugins":[{"type":"meshinit"}, {"type":"ptp"},{"type":"meshinit","x":2}]}"#;
        assert_eq!(
            without_plugin(old).unwrap().unwrap(),
            r#"{"plugins":[{"type":"ptp"}]}"#
        );
        assert_eq!(
            with_plugin(old, &plugin).unwrap(),
            r#"{"plugins":[{"type":"ptp"},{"n":1,"type":"meshinit"}]}"#
        );
        // A repeated key: the last one is the list (as serde_json and Go read it).
        let twice = r#"{"plugins":[{"type":"a"}],"plugins":[{"type":"b"}]}"#;
        assert_eq!(
            with_plugin(twice, &plugin).unwrap(),
            r#"{"plugins":[{"type":"a"}],"plugins":[{"type":"b"},{"n":1,"type":"meshinit"}]}"#
        );
    }
}

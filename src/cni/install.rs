//! `meshinit cni-install`: installing meshinit as a chained plugin on a node, as Istio's
//! install-cni does (what examples/cni-daemonset.yaml runs): the flags, the choice of the
//! node's conflist and the edit that appends meshinit's entry (replacing an older one). Pure;
//! the files are read and written by `apply::cni_files`.

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
    /// Stay running until SIGTERM, then take the entry out again (a DaemonSet's container).
    pub wait: bool,
}

/// The usage line, for errors.
pub const USAGE: &str = "usage: meshinit cni-install --bin-dir DIR --conf-dir DIR --plugin-config JSON_OR_@FILE [--conflist NAME] [--wait]";

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
    let plugin: Value =
        serde_json::from_str(&text).map_err(|e| format!("--plugin-config is not JSON: {e}"))?;
    check_plugin(&plugin)?;
    Ok(Install {
        bin_dir: bin_dir.ok_or_else(|| missing("--bin-dir"))?,
        conf_dir: conf_dir.ok_or_else(|| missing("--conf-dir"))?,
        conflist,
        plugin,
        wait,
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

/// The conflist the runtime uses: the first `.conflist` file in name order (runtimes take the
/// first configuration file in name order; a single-plugin `.conf` cannot chain).
pub fn pick_conflist(names: &[String]) -> Result<String, String> {
    let mut candidates: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json"))
        .collect();
    candidates.sort();
    match candidates.first() {
        Some(name) if name.ends_with(".conflist") => Ok(name.to_string()),
        Some(name) => Err(format!(
            "the node's first CNI configuration {name} is not a .conflist: a single plugin cannot be chained (name one with --conflist)"
        )),
        None => Err("no CNI configuration in the conf directory yet (the cluster's CNI writes one; retry)".to_string()),
    }
}

/// The conflist with meshinit's entry appended last (an older meshinit entry removed first).
pub fn with_plugin(conflist: &str, plugin: &Value) -> Result<String, String> {
    let mut list: Value = serde_json::from_str(conflist).map_err(|e| format!("not JSON: {e}"))?;
    let plugins = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("no \"plugins\" list")?;
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some("meshinit"));
    plugins.push(plugin.clone());
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&list).unwrap_or_default()
    ))
}

/// The conflist with meshinit's entry taken out (uninstall).
pub fn without_plugin(conflist: &str) -> Result<String, String> {
    let mut list: Value = serde_json::from_str(conflist).map_err(|e| format!("not JSON: {e}"))?;
    let plugins = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("no \"plugins\" list")?;
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some("meshinit"));
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&list).unwrap_or_default()
    ))
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
            ]),
            &no_file,
        )
        .unwrap();
        assert_eq!(ok.bin_dir, PathBuf::from("/host/opt/cni/bin"));
        assert!(ok.wait);
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
        assert_eq!(pick_conflist(&names).unwrap(), "10-a.conflist");
        assert!(pick_conflist(&args(&["05-x.conf", "10-a.conflist"])).is_err());
        assert!(pick_conflist(&[]).is_err());
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
        let removed: Value =
            serde_json::from_str(&without_plugin(&edited.to_string()).unwrap()).unwrap();
        assert_eq!(removed["plugins"].as_array().unwrap().len(), 2);
    }
}

//! The iptables side of applying: which variant (legacy or nft) to use per family, reading the
//! live rules with `*-save`, and writing them with `*-restore --noflush`, one transaction per
//! family, with a rollback to the saved state when something fails.

use std::time::Duration;

use crate::sys::process::{Ended, Output, RunError, Runner};
use crate::sys::transient::Transient;
use std::collections::BTreeMap;

use crate::config::IptablesVariant;
use crate::plan::{Family, Table};
use crate::render::iptables_save::{
    incompatible_tables, parse_save, saved_by, unreadable_rules, ExpectedTable, Saved,
};

/// The iptables tools of one family and variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tools {
    /// IPv4 (`iptables-*`) or IPv6 (`ip6tables-*`).
    pub family: Family,
    /// The legacy or nft variant.
    pub variant: IptablesVariant,
}

impl Tools {
    fn name(&self, suffix: &str) -> String {
        let base = match self.family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self.variant {
            IptablesVariant::Legacy => "legacy",
            IptablesVariant::Nft => "nft",
        };
        format!("{base}-{variant}{suffix}")
    }
    /// The dump tool: `iptables-nft-save`, ….
    pub fn save(&self) -> String {
        self.name("-save")
    }
    /// The loader: `iptables-nft-restore`, ….
    pub fn restore(&self) -> String {
        self.name("-restore")
    }
    /// The plain tool's name, which names the variant in the summary: `iptables-nft`, ….
    pub fn main(&self) -> String {
        self.name("")
    }
}

/// Why the iptables step failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IptablesError {
    /// Neither variant works for a family: why nft is not usable, and legacy's failure.
    #[error("no usable iptables for {family:?}: nft: {nft}; legacy: {legacy}")]
    NoVariant {
        /// The family.
        family: Family,
        /// Why the nft variant cannot be used.
        nft: NotUsable,
        /// Why the legacy variant cannot be read.
        legacy: Box<IptablesError>,
    },
    /// A tool ran and failed.
    #[error(
        "{program} {ended}{}{}",
        if stderr.is_empty() { String::new() } else { format!(": {stderr}") },
        hint.map(|h| h.to_string()).unwrap_or_default()
    )]
    Tool {
        /// The tool that failed.
        program: String,
        /// How it ended: `exited with code 1`, `was killed by signal 6 (SIGABRT)`
        /// (iptables-nft 1.8.7's save can crash so, with a double free).
        ended: Ended,
        /// What it printed on stderr, trimmed.
        stderr: String,
        /// A hint at the cause (held xtables lock, missing kernel module).
        hint: Option<Hint>,
    },
    /// The dump tool says it cannot list these tables (rules or chains iptables cannot
    /// express, e.g. added with `nft`): their content is unknown, so nothing may be written
    /// over them and they may not be taken for absent.
    #[error(
        "{version} cannot list table{s} {names}: it printed `# Table … is incompatible, use 'nft' tool.`, \
         so the table holds rules or chains this iptables cannot express (added with nft, or by a newer iptables); \
         meshinit cannot tell what is in it, so it neither writes over it nor takes it for absent \
         (see `nft list table {family} {first}`)",
        s = if tables.len() > 1 { "s" } else { "" },
        names = tables.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
        first = tables.first().map(String::as_str).unwrap_or("")
    )]
    Incompatible {
        /// The dump tool.
        program: String,
        /// The tool and its version, as it names itself (e.g. `iptables-nft-save v1.8.7
        /// (nf_tables)`).
        version: String,
        /// `ip` or `ip6`: nft's family of these tables.
        family: &'static str,
        /// The tables it cannot list.
        tables: Vec<String>,
    },
    /// The dump tool printed rules of ours without some of their matches (an old
    /// iptables-nft reading what a newer one wrote): the state cannot be read faithfully.
    #[error(
        "{version} cannot print {count} rule(s) of ours faithfully: it shows them without some of their matches, \
         so they were most likely written by a newer iptables-nft (1.8.8 and later write port, mark and other \
         matches as native nftables expressions that older versions cannot print). meshinit cannot read \
         them, so it neither writes over them nor takes them for different rules; use an image whose \
         iptables is at least as new as the one that wrote them, or remove them with that \
         version (--cleanup-only); if they are rules of an earlier configuration instead (one \
         without those matches), run --cleanup-only with that configuration's arguments first:\n{}",
        lines.join("\n"),
        count = lines.len()
    )]
    Unreadable {
        /// The dump tool and its version.
        version: String,
        /// Each rule as shown, with its planned form.
        lines: Vec<String>,
    },
    /// A step of choosing or reading a variant failed: what it was, and the failure, whose
    /// transient marker it keeps.
    #[error("{doing}: {source}")]
    Context {
        /// What was being done.
        doing: Doing,
        /// The failure.
        source: Box<IptablesError>,
    },
    /// A tool could not be started, or ran past the run's deadline (`--timeout`) and was
    /// killed (never transient: the deadline is spent).
    #[error(transparent)]
    Run(#[from] RunError),
    /// A thread reading a family's rules panicked.
    #[error("reading the {0} rules panicked")]
    Panicked(&'static str),
}

/// What was being done when an iptables step failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Doing {
    /// Reading both variants of a family to choose one.
    Reading(Family),
    /// Reading a family with one tool (`--check`).
    ReadingWith(Tools),
    /// The nft variant's nat probe.
    Probing(Tools),
}

impl std::fmt::Display for Doing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Doing::Reading(family) => write!(f, "cannot read the {family:?} rules"),
            Doing::ReadingWith(tools) => write!(
                f,
                "cannot read the {} rules with {}",
                family_name(tools.family),
                tools.save()
            ),
            Doing::Probing(tools) => write!(
                f,
                "the nft variant's nat table probe ({} --noflush) failed for a reason that does not show nft to be unusable here, so no iptables variant was chosen for {:?}",
                tools.restore(),
                tools.family
            ),
        }
    }
}

/// `IPv4` or `IPv6`, as messages name a family.
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// What a tool's failure most likely comes from, said after its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Another program holds the xtables lock.
    XtablesLock,
    /// Legacy iptables cannot make its lock file: `/run` is read-only.
    ReadOnlyRun,
    /// The kernel lacks this piece (a module to load).
    Kernel(&'static str),
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hint::XtablesLock => f.write_str(
                " (another program holds the xtables lock, /run/xtables.lock, longer than --xtables-wait)",
            ),
            Hint::ReadOnlyRun => f.write_str(
                " (legacy iptables needs a writable /run for its lock file: keep readOnlyRootFilesystem \
                 false as Istio does for istio-init, mount an emptyDir at /run, or use the nft variant \
                 or --native-nftables)",
            ),
            Hint::Kernel(piece) => write!(
                f,
                " (the kernel seems to lack {piece}; load the module on the node)"
            ),
        }
    }
}

/// Why the nft variant cannot be used here (its probe's answer, or its tool missing).
#[derive(Clone, Debug)]
pub enum NotUsable {
    /// Its tools are not installed, or the kernel lacks its interface (see `unavailable`).
    Unavailable(Box<IptablesError>),
    /// The probe's tool said so.
    Answered {
        /// What its answer means (see `not_usable`).
        why: &'static str,
        /// The tool.
        program: String,
        /// How it ended.
        ended: Ended,
        /// Its stderr, on one line.
        words: String,
    },
}

impl std::fmt::Display for NotUsable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotUsable::Unavailable(e) => write!(f, "{e}"),
            NotUsable::Answered {
                why,
                program,
                ended,
                words,
            } => write!(f, "{why}; {program} {ended}: {words}"),
        }
    }
}

fn run(
    runner: &dyn Runner,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Result<Output, IptablesError> {
    Ok(runner.run(program, args, env, stdin)?)
}

fn checked(program: &str, out: Output) -> Result<Output, IptablesError> {
    if out.success() {
        return Ok(out);
    }
    let hint = if out.stderr.contains("xtables lock") {
        Some(Hint::XtablesLock)
    } else if out.stderr.contains("lock file") && out.stderr.contains("Read-only file system") {
        Some(Hint::ReadOnlyRun)
    } else {
        kernel_hint(&out.stderr)
    };
    Err(IptablesError::Tool {
        program: program.to_string(),
        ended: out.ended(),
        hint,
        stderr: out.stderr.trim().to_string(),
    })
}

impl IptablesError {
    /// Why this failure may pass when tried again (a lock held past its wait, the kernel's
    /// `EBUSY`/`EAGAIN`/`EINTR`: see [`crate::sys::transient::transient_tool`]); `None` for
    /// every other failure.
    pub fn transient(&self) -> Option<Transient> {
        match self {
            IptablesError::Tool {
                program,
                ended,
                stderr,
                ..
            } => crate::sys::transient::transient_end(program, *ended, stderr),
            IptablesError::Context { source, .. } => source.transient(),
            _ => None,
        }
    }
}

/// Names the kernel piece behind the iptables errors that mean one is missing.
pub fn kernel_hint(stderr: &str) -> Option<Hint> {
    let pieces = [
        ("TPROXY", "the TPROXY target (xt_TPROXY / nft_tproxy)"),
        ("owner", "the owner match (xt_owner)"),
        ("multiport", "the multiport match (xt_multiport)"),
        ("conntrack", "the conntrack match (xt_conntrack)"),
        ("connmark", "the connmark match (xt_connmark)"),
        ("CONNMARK", "the CONNMARK target (xt_CONNMARK)"),
        ("REDIRECT", "the REDIRECT target (xt_REDIRECT / nft_redir)"),
        ("`CT'", "the CT target (xt_CT)"),
        ("table 'nat'", "the nat table (iptable_nat / nft_chain_nat)"),
        ("table 'mangle'", "the mangle table (iptable_mangle)"),
        ("table 'raw'", "the raw table (iptable_raw)"),
        ("table `nat'", "the nat table (iptable_nat / nft_chain_nat)"),
    ];
    let missing = stderr.contains("Couldn't load")
        || stderr.contains("unable to initialize table")
        || stderr.contains("does not exist")
        || stderr.contains("No such file or directory")
        || stderr.contains("Protocol not supported");
    if !missing {
        return None;
    }
    pieces
        .iter()
        .find(|(needle, _)| stderr.contains(needle))
        .map(|(_, piece)| Hint::Kernel(piece))
}

/// Reads the live rules of these tools.
pub fn save(runner: &dyn Runner, tools: Tools) -> Result<Saved, IptablesError> {
    let program = tools.save();
    let out = checked(&program, run(runner, &program, &[], &[], None)?)?;
    let tables = incompatible_tables(&out.stdout);
    if !tables.is_empty() {
        // A dump of only incompatible tables has no `# Generated by` line: ask the tool.
        let version = saved_by(&out.stdout).unwrap_or_else(|| version_of(runner, &program));
        return Err(IptablesError::Incompatible {
            program,
            version,
            family: match tools.family {
                Family::V4 => "ip",
                Family::V6 => "ip6",
            },
            tables,
        });
    }
    Ok(parse_save(&out.stdout))
}

/// The first line of `PROGRAM --version`, for messages.
fn version_of(runner: &dyn Runner, program: &str) -> String {
    runner
        .run(program, &["--version"], &[], None)
        .ok()
        .and_then(|out| out.stdout.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| format!("{program} (version unknown)"))
}

/// Fails when the dump shows rules of ours without some of their matches (see
/// [`unreadable_rules`]): comparing, replacing or deleting them by that text would be wrong.
pub fn require_readable(
    runner: &dyn Runner,
    tools: Tools,
    live: &Saved,
    expected: &BTreeMap<Table, ExpectedTable>,
) -> Result<(), IptablesError> {
    if tools.variant != IptablesVariant::Nft {
        return Ok(());
    }
    let lines = unreadable_rules(live, expected);
    if lines.is_empty() {
        return Ok(());
    }
    // Only iptables-nft before 1.8.8 prints rules so (measured with 1.8.7, 1.8.9, 1.8.11); for
    // any other the same text is an earlier configuration of ours: drift, said by the caller.
    let version = version_of(runner, &tools.save());
    if !older_than_1_8_8(&version) {
        return Ok(());
    }
    Err(IptablesError::Unreadable { version, lines })
}

/// Whether `iptables-nft-save v1.8.7 (nf_tables)` names a version before 1.8.8.
fn older_than_1_8_8(version: &str) -> bool {
    let Some(number) = version.split_whitespace().find_map(|w| w.strip_prefix('v')) else {
        return false;
    };
    let parts: Vec<u32> = number.split('.').map_while(|p| p.parse().ok()).collect();
    parts.len() == 3 && (parts[0], parts[1], parts[2]) < (1, 8, 8)
}

/// Reads the live rules of a variant that may not exist here: `None` when its tool is not
/// installed or the kernel lacks the variant's interface altogether (neither can hold rules).
/// Any other failure — no permission, a broken tool — is an error: the state is unknown.
pub fn save_if_present(runner: &dyn Runner, tools: Tools) -> Result<Option<Saved>, IptablesError> {
    match save(runner, tools) {
        Ok(saved) => Ok(Some(saved)),
        Err(e) if unavailable(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a save error means the variant does not exist here (tool not installed, or the
/// kernel lacks its interface), rather than that its state could not be read.
fn unavailable(e: &IptablesError) -> bool {
    match e {
        IptablesError::Run(RunError::NotInstalled { .. }) => true,
        // No nfnetlink (the socket is refused), or no nf_tables (nfnetlink answers EINVAL
        // for the subsystem it lacks): the texts of iptables-nft 1.8.9 (see `not_usable`).
        IptablesError::Tool { stderr, .. } => [
            "Protocol not supported",
            "Address family not supported",
            "Could not fetch rule set generation id: Invalid argument",
        ]
        .iter()
        .any(|m| stderr.contains(m)),
        IptablesError::NoVariant { .. }
        | IptablesError::Context { .. }
        | IptablesError::Run(_)
        | IptablesError::Incompatible { .. }
        | IptablesError::Unreadable { .. }
        | IptablesError::Panicked(_) => false,
    }
}

/// How legacy iptables serialises writers.
#[derive(Clone, Debug)]
pub struct XtablesLock {
    /// How long to wait for it.
    pub wait: Duration,
    /// A lock file of this network namespace's own instead of the host-wide
    /// /run/xtables.lock (`--cni-mode`): the tables of different namespaces are separate, so
    /// a pod's setup need not wait for the host's kube-proxy (istio/istio#58507).
    pub file: Option<std::path::PathBuf>,
}

/// Feeds a restore input. With `noflush` (everything meshinit writes) only the listed chains
/// change; without, each listed table would be replaced wholesale.
pub fn restore(
    runner: &dyn Runner,
    tools: Tools,
    text: &str,
    noflush: bool,
    lock: &XtablesLock,
) -> Result<(), IptablesError> {
    let program = tools.restore();
    let mut args: Vec<String> = Vec::new();
    let mut env: Vec<(&str, &str)> = Vec::new();
    if noflush {
        args.push("--noflush".to_string());
    }
    if tools.variant == IptablesVariant::Legacy {
        // Legacy iptables serialises writers with a lock file; wait for it, bounded.
        args.push(format!("--wait={}", lock.wait.as_secs().max(1)));
        if let Some(file) = lock.file.as_ref().and_then(|f| f.to_str()) {
            env.push(("XTABLES_LOCKFILE", file));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    checked(&program, run(runner, &program, &args, &env, Some(text))?).map(|_| ())
}

/// Whether the saved rules of a variant hold anything at all, or anything of ours.
fn holds_rules(saved: &Saved) -> bool {
    saved
        .values()
        .any(|t| !t.rules.is_empty() || t.our_chains().next().is_some())
}

fn holds_ours(saved: &Saved) -> bool {
    saved.values().any(|t| t.our_chains().next().is_some())
}

/// The variant chosen for a family, why, and its live rules (read while choosing).
#[derive(Debug)]
pub struct Chosen {
    /// The tools of the chosen variant.
    pub tools: Tools,
    /// Why this variant, for the log.
    pub reason: Why,
    /// Its live rules, as `*-save` printed them while choosing.
    pub state: Saved,
}

/// Why a variant was chosen, for the log.
#[derive(Clone, Debug)]
pub enum Why {
    /// `--force-iptables-binary`.
    Forced,
    /// Our chains are in the nft tables.
    OursInNft,
    /// Our chains are in the legacy tables.
    OursInLegacy,
    /// The legacy tables hold other rules.
    LegacyHoldsRules,
    /// The nft variant's nat probe passed.
    NftWorks,
    /// The nft variant cannot be used here.
    NftNotUsable(NotUsable),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Forced => f.write_str("--force-iptables-binary asks for it"),
            Why::OursInNft => f.write_str("our chains are already in the nft tables"),
            Why::OursInLegacy => f.write_str("our chains are already in the legacy tables"),
            Why::LegacyHoldsRules => f.write_str("the legacy tables already hold rules"),
            Why::NftWorks => f.write_str("nft works: its nat table probe passed"),
            Why::NftNotUsable(why) => write!(f, "nft is not usable here: {why}"),
        }
    }
}

/// Picks the iptables variant for a family and says why:
/// `--force-iptables-binary` wins; else the variant that already holds our chains; else legacy
/// when its tables hold rules; else nft when it can create a rule in the nat table (the probe
/// Istio moved to nat in #57380: filter can work while nat does not); else legacy.
pub fn choose_variant(
    runner: &(dyn Runner + Sync),
    family: Family,
    forced: Option<IptablesVariant>,
) -> Result<Chosen, IptablesError> {
    choose_variant_known(runner, family, forced, &|_| None)
}

/// A place's dump read before choosing (the inventory's).
#[derive(Clone, Debug)]
pub struct Known {
    /// The dump.
    pub saved: Saved,
    /// Whether the tool printed it (else the kernel showed the place empty and the tool was
    /// not run).
    pub by_tool: bool,
}

/// [`choose_variant`] given the dumps already read (the inventory's): a variant `known`
/// answers for is not read again; any other is read as `choose_variant` does, so a missing
/// or failing tool gives the same error. The chosen variant's state is always one its tool
/// printed, so a run writes only with a save tool that works (the read-back and the undo
/// need it): one the kernel showed empty is read once more, with the tool.
pub fn choose_variant_known(
    runner: &(dyn Runner + Sync),
    family: Family,
    forced: Option<IptablesVariant>,
    known: &dyn Fn(Tools) -> Option<Known>,
) -> Result<Chosen, IptablesError> {
    let mut chosen = choose_from_known(runner, family, forced, known)?;
    if !chosen.by_tool {
        chosen.chosen.state = save(runner, chosen.chosen.tools)?;
    }
    Ok(chosen.chosen)
}

/// The choice, and whether its state is one the tool printed.
struct Choice {
    chosen: Chosen,
    by_tool: bool,
}

fn choose_from_known(
    runner: &(dyn Runner + Sync),
    family: Family,
    forced: Option<IptablesVariant>,
    known: &dyn Fn(Tools) -> Option<Known>,
) -> Result<Choice, IptablesError> {
    let read = |runner: &dyn Runner, tools: Tools| match known(tools) {
        Some(k) => Ok((k.saved, k.by_tool)),
        None => save(runner, tools).map(|saved| (saved, true)),
    };
    let legacy = Tools {
        family,
        variant: IptablesVariant::Legacy,
    };
    let nft = Tools {
        family,
        variant: IptablesVariant::Nft,
    };
    let chosen = |tools, reason: Why, (state, by_tool): (Saved, bool)| Choice {
        chosen: Chosen {
            tools,
            reason,
            state,
        },
        by_tool,
    };
    if let Some(variant) = forced {
        let tools = Tools { family, variant };
        return Ok(chosen(tools, Why::Forced, read(runner, tools)?));
    }
    let legacy_saved = read(runner, legacy);
    let nft_saved = read(runner, nft);
    // A variant that exists but cannot be read may hold our rules: deciding without it could
    // install a second ruleset.
    for saved in [&legacy_saved, &nft_saved] {
        if let Err(e) = saved {
            if !unavailable(e) {
                return Err(IptablesError::Context {
                    doing: Doing::Reading(family),
                    source: Box::new(e.clone()),
                });
            }
        }
    }
    if let Ok(saved) = &nft_saved {
        if holds_ours(&saved.0) {
            return Ok(chosen(nft, Why::OursInNft, saved.clone()));
        }
    }
    if let Ok(saved) = &legacy_saved {
        if holds_ours(&saved.0) {
            return Ok(chosen(legacy, Why::OursInLegacy, saved.clone()));
        }
        if holds_rules(&saved.0) {
            return Ok(chosen(legacy, Why::LegacyHoldsRules, saved.clone()));
        }
    }
    let nft_probe = match &nft_saved {
        // Shown empty by the kernel: read with the tool while probing, for the chosen state.
        Ok((_, false)) => std::thread::scope(|scope| {
            let read = scope.spawn(|| save(runner, nft));
            let probe = probe_nat(runner, nft);
            let read = read.join().unwrap_or(Err(IptablesError::Panicked("nft")));
            probe.map(|probe| (probe, Some(read)))
        }),
        Ok(_) => probe_nat(runner, nft).map(|probe| (probe, None)),
        // Not installed, or the kernel lacks nf_tables (see `unavailable`).
        Err(e) => Ok((
            Probe::NotUsable(NotUsable::Unavailable(Box::new(e.clone()))),
            None,
        )),
    };
    // A probe that failed for another reason than nft being unusable says nothing about which
    // variant the node uses: no variant is chosen (a transient failure is retried).
    let nft_probe = nft_probe.map_err(|e| IptablesError::Context {
        doing: Doing::Probing(nft),
        source: Box::new(e),
    })?;
    match (nft_probe, legacy_saved, nft_saved) {
        // The state read before (or while) probing: what the probe adds (the nat table's empty
        // OUTPUT base chain, if it was not there) holds nothing of ours, changes no packet and
        // is deleted again if the run fails. The probe's rule is added and deleted in one
        // transaction, so no read ever shows it.
        ((Probe::Works, Some(read)), _, _) => Ok(chosen(nft, Why::NftWorks, (read?, true))),
        ((Probe::Works, None), _, Ok(saved)) => Ok(chosen(nft, Why::NftWorks, saved)),
        ((Probe::Works, None), _, Err(e)) => Err(e),
        ((Probe::NotUsable(why), _), Ok(saved), _) => {
            Ok(chosen(legacy, Why::NftNotUsable(why), saved))
        }
        ((Probe::NotUsable(why), _), Err(legacy_err), _) => Err(IptablesError::NoVariant {
            family,
            nft: why,
            legacy: Box::new(legacy_err),
        }),
    }
}

/// What the nft variant's nat probe showed.
#[derive(Debug)]
enum Probe {
    /// The nat table can be used.
    Works,
    /// The kernel (or the image) lacks what nft needs; why, from the tool's own words.
    NotUsable(NotUsable),
}

/// The probe's restore input: a rule that can never match (protocol 255) added to nat OUTPUT
/// and deleted again in the same transaction. The kernel still has to create the nat table's
/// OUTPUT base chain (what fails without nat support), but since the batch is atomic nothing
/// of the rule can be left behind, even when meshinit is killed meanwhile.
pub const PROBE_INPUT: &str =
    "*nat\n-A OUTPUT -p 255 -j RETURN\n-D OUTPUT -p 255 -j RETURN\nCOMMIT\n";

/// Whether the nft variant can use the nat table (Istio's probe, made atomic: see
/// [`PROBE_INPUT`]). `NotUsable` only when the tool's answer says so (see [`not_usable`]);
/// any other failure — a transient one (`EBUSY`, …: marked, so `--retries` retries it), a
/// tool killed by a signal or at the deadline, an unknown error — is an error: taking it
/// for "nft does not work" would silently pick legacy on a node whose kube-proxy or CNI
/// writes nft rules, so the pod's traffic would meet other rules than ours.
fn probe_nat(runner: &dyn Runner, tools: Tools) -> Result<Probe, IptablesError> {
    let program = tools.restore();
    let out = match run(runner, &program, &["--noflush"], &[], Some(PROBE_INPUT)) {
        Ok(out) => out,
        Err(e) if unavailable(&e) => {
            return Ok(Probe::NotUsable(NotUsable::Unavailable(Box::new(e))))
        }
        Err(e) => return Err(e),
    };
    if out.success() {
        return Ok(Probe::Works);
    }
    if let Some(why) = not_usable(&out) {
        // How it ended is said too, with the tool's own words on one line (a batch error
        // starts with a line that names only the tool).
        let words: Vec<&str> = out
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return Ok(Probe::NotUsable(NotUsable::Answered {
            why,
            program,
            ended: out.ended(),
            words: words.join(" "),
        }));
    }
    checked(&program, out).map(|_| Probe::Works)
}

/// What the probe's failure means when it says the nft variant cannot be used here, from
/// iptables-nft 1.8.9's own texts for each missing piece, measured with the real tool on this
/// kernel, the missing piece played so: `strace -e inject=socket:error=EPROTONOSUPPORT` (no
/// nfnetlink), `strace -e inject=sendto:error=EINVAL:when=1` (the answer nfnetlink gives for a
/// subsystem it lacks), and a preloaded `sendmsg` that renames the batch's chain type `nat`
/// to one the kernel does not have (its answer is the one it gives without nft_chain_nat):
/// - no nfnetlink (`socket(AF_NETLINK, …, NETLINK_NETFILTER)` refused): `iptables-nft-restore/
///   1.8.9 (nf_tables) Failed to initialize nft: Protocol not supported`, exit 1 (or `Address
///   family not supported by protocol`);
/// - no nf_tables (nfnetlink answers `EINVAL` for a subsystem it lacks): `iptables-nft-restore
///   v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument`, exit 4;
/// - no nat support (no `nat` chain type: `nft_chain_nat`): the kernel answers `ENOENT` to the
///   base chain and aborts the batch, `iptables-nft-restore v1.8.9 (nf_tables): ` then `line 2:
///   CHAIN_ADD failed (No such file or directory): chain OUTPUT` (and the rule lines), exit 4
///   (`EOPNOTSUPP` in the same place: a batch nf_tables cannot take);
/// - Istio's own test: a stderr saying something `does not exist` (a table or chain).
///
/// A tool killed by a signal has not answered at all, so it never counts.
fn not_usable(out: &Output) -> Option<&'static str> {
    // Killed: no exit code, no answer.
    out.code?;
    let stderr = &out.stderr;
    if stderr.contains("Failed to initialize nft")
        && ["Protocol not supported", "Address family not supported"]
            .iter()
            .any(|m| stderr.contains(m))
    {
        return Some("the kernel has no nfnetlink");
    }
    if stderr.contains("Could not fetch rule set generation id: Invalid argument") {
        return Some("the kernel has no nf_tables");
    }
    if ["(No such file or directory)", "(Operation not supported)"]
        .iter()
        .any(|m| stderr.contains(m))
        && (stderr.contains("CHAIN_ADD failed") || stderr.contains("TABLE_ADD failed"))
    {
        return Some("the kernel has no nf_tables nat support (nft_chain_nat)");
    }
    if stderr.contains("does not exist") {
        return Some("a table or chain the probe needs does not exist");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Answers each program from a table and records the calls.
    #[derive(Default)]
    struct Fake {
        answers: BTreeMap<String, Output>,
        calls: Mutex<Vec<String>>,
    }

    impl Fake {
        fn answer(mut self, program: &str, code: i32, stdout: &str) -> Fake {
            let out = Output {
                code: Some(code),
                signal: None,
                stdout: stdout.into(),
                stderr: if code == 0 {
                    String::new()
                } else {
                    "iptables: No chain/target/match by that name. Couldn't load target `TPROXY'"
                        .into()
                },
            };
            self.answers.insert(program.to_string(), out);
            self
        }

        /// `program` ends so (`code` `None`: killed by `signal`), printing `stderr`.
        fn ends(
            mut self,
            program: &str,
            code: Option<i32>,
            signal: Option<i32>,
            stderr: &str,
        ) -> Fake {
            let out = Output {
                code,
                signal,
                stdout: String::new(),
                stderr: stderr.into(),
            };
            self.answers.insert(program.to_string(), out);
            self
        }
    }

    impl Runner for Fake {
        fn installed(&self, program: &str) -> bool {
            self.answers.contains_key(program)
        }

        fn run(
            &self,
            program: &str,
            args: &[&str],
            env: &[(&str, &str)],
            _: Option<&str>,
        ) -> Result<Output, RunError> {
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
            self.calls.lock().unwrap().push(
                format!("{}{program} {}", env.concat(), args.join(" "))
                    .trim()
                    .to_string(),
            );
            self.answers
                .get(program)
                .cloned()
                .ok_or_else(|| RunError::NotInstalled {
                    program: program.to_string(),
                })
        }
    }

    const EMPTY: &str = "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    const FOREIGN: &str = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n";
    const OURS: &str = "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\nCOMMIT\n";

    fn pick(fake: &Fake) -> Result<IptablesVariant, IptablesError> {
        choose_variant(fake, Family::V4, None).map(|c| c.tools.variant)
    }

    #[test]
    fn nft_is_chosen_when_legacy_is_empty_and_the_nat_probe_works() {
        let fake = Fake::default()
            .answer("iptables-legacy-save", 0, EMPTY)
            .answer("iptables-nft-save", 0, "")
            .answer("iptables-nft-restore", 0, "");
        assert_eq!(pick(&fake).unwrap(), IptablesVariant::Nft);
        let calls = fake.calls.lock().unwrap();
        // One restore transaction: nothing of the probe can outlive it.
        assert!(calls.contains(&"iptables-nft-restore --noflush".to_string()));
        assert!(
            !calls.iter().any(|c| c.starts_with("iptables-nft ")),
            "{calls:?}"
        );
    }

    #[test]
    fn dumps_in_hand_are_not_read_again_and_the_chosen_one_is_read_with_its_tool() {
        let fake = || {
            Fake::default()
                .answer("iptables-legacy-save", 0, "")
                .answer("iptables-nft-save", 0, "")
                .answer("iptables-nft-restore", 0, "")
        };
        let known = |by_tool| {
            move |_| {
                Some(Known {
                    saved: Saved::default(),
                    by_tool,
                })
            }
        };
        // Both read by their tools: the probe and nothing else (no save after it).
        let f = fake();
        let chosen = choose_variant_known(&f, Family::V4, None, &known(true)).unwrap();
        assert_eq!(chosen.tools.variant, IptablesVariant::Nft);
        assert_eq!(*f.calls.lock().unwrap(), ["iptables-nft-restore --noflush"]);
        // Shown empty by the kernel: the chosen variant is read with its tool before writing.
        // (The two at once: the save does not wait for the probe.)
        let f = fake();
        choose_variant_known(&f, Family::V4, None, &known(false)).unwrap();
        let mut calls = f.calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(
            calls,
            ["iptables-nft-restore --noflush", "iptables-nft-save"]
        );
        let f = fake();
        choose_variant_known(&f, Family::V4, Some(IptablesVariant::Legacy), &known(false)).unwrap();
        assert_eq!(*f.calls.lock().unwrap(), ["iptables-legacy-save"]);
    }

    #[test]
    fn legacy_wins_when_it_already_holds_rules_or_ours() {
        let fake = Fake::default()
            .answer("iptables-legacy-save", 0, FOREIGN)
            .answer("iptables-nft-save", 0, "");
        assert_eq!(pick(&fake).unwrap(), IptablesVariant::Legacy);
        assert!(
            !fake
                .calls
                .lock()
                .unwrap()
                .iter()
                .any(|c| c.starts_with("iptables-nft-restore")),
            "no probe needed"
        );
        let fake = Fake::default()
            .answer("iptables-legacy-save", 0, EMPTY)
            .answer("iptables-nft-save", 0, OURS);
        assert_eq!(
            pick(&fake).unwrap(),
            IptablesVariant::Nft,
            "our chains decide first"
        );
    }

    /// The probe's answers that say nft cannot be used here, as iptables-nft 1.8.9 prints
    /// them (measured as [`not_usable`] says; the last one is Istio's `does not exist` test).
    const NOT_USABLE: [(i32, &str); 5] = [
        (1, "iptables-nft-restore/1.8.9 (nf_tables) Failed to initialize nft: Protocol not supported\n"),
        (1, "iptables-nft-restore/1.8.9 (nf_tables) Failed to initialize nft: Address family not supported by protocol\n"),
        (4, "iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument\n"),
        (4, "iptables-nft-restore v1.8.9 (nf_tables): \nline 2: CHAIN_ADD failed (No such file or directory): chain OUTPUT\nline 2: RULE_APPEND failed (No such file or directory): rule in chain OUTPUT\nline 3: RULE_DELETE failed (No such file or directory): rule in chain OUTPUT\n"),
        (1, "iptables-nft-restore v1.8.9 (nf_tables): Table 'nat' does not exist\n"),
    ];

    fn probing(code: Option<i32>, signal: Option<i32>, stderr: &str) -> Fake {
        Fake::default()
            .answer("iptables-legacy-save", 0, EMPTY)
            .answer("iptables-nft-save", 0, "")
            .ends("iptables-nft-restore", code, signal, stderr)
    }

    #[test]
    fn legacy_is_chosen_only_when_the_probe_says_nft_is_not_usable_here() {
        for (code, stderr) in NOT_USABLE {
            let fake = probing(Some(code), None, stderr);
            let chosen = choose_variant(&fake, Family::V4, None).unwrap();
            assert_eq!(chosen.tools.variant, IptablesVariant::Legacy, "{stderr}");
            assert!(matches!(
                chosen.reason,
                Why::NftNotUsable(NotUsable::Answered { .. })
            ));
            let reason = chosen.reason.to_string();
            assert!(
                reason.starts_with("nft is not usable here: the kernel has no ")
                    || reason.starts_with("nft is not usable here: a table or chain"),
                "{reason}"
            );
            assert!(
                reason.contains(&format!(
                    "; iptables-nft-restore exited with code {code}: iptables-nft-restore"
                )),
                "{reason}"
            );
        }
        let fake = probing(Some(4), None, NOT_USABLE[2].1);
        assert_eq!(
            choose_variant(&fake, Family::V4, None)
                .unwrap()
                .reason
                .to_string(),
            "nft is not usable here: the kernel has no nf_tables; iptables-nft-restore exited with code 4: iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument"
        );
        let fake = probing(Some(4), None, NOT_USABLE[3].1);
        assert_eq!(
            choose_variant(&fake, Family::V4, None)
                .unwrap()
                .reason
                .to_string(),
            "nft is not usable here: the kernel has no nf_tables nat support (nft_chain_nat); iptables-nft-restore exited with code 4: iptables-nft-restore v1.8.9 (nf_tables): line 2: CHAIN_ADD failed (No such file or directory): chain OUTPUT line 2: RULE_APPEND failed (No such file or directory): rule in chain OUTPUT line 3: RULE_DELETE failed (No such file or directory): rule in chain OUTPUT"
        );
    }

    #[test]
    fn a_probe_failing_for_another_reason_chooses_nothing_and_keeps_its_transient_marker() {
        // EBUSY (measured text): transient, so --retries retries it; never legacy.
        let busy = "iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Device or resource busy\n";
        let err = choose_variant(&probing(Some(4), None, busy), Family::V4, None).unwrap_err();
        assert!(
            matches!(
                err.transient(),
                Some(Transient::ToolErrno {
                    errno: nix::errno::Errno::EBUSY,
                    ..
                })
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("the nft variant's nat table probe (iptables-nft-restore --noflush) failed for a reason that does not show nft to be unusable here, so no iptables variant was chosen for V4: iptables-nft-restore exited with code 4: ")
                && text.contains("Device or resource busy"),
            "{text}"
        );
        // Killed by a signal, or an unknown failure: an error naming the tool, how it ended
        // and its stderr; not transient.
        for (code, signal, stderr, ended) in [
            (None, Some(9), "", "was killed by signal 9 (SIGKILL)"),
            (None, Some(6), "double free\n", "was killed by signal 6 (SIGABRT)"),
            (Some(1), None, "iptables-nft-restore: line 2 failed\n", "exited with code 1"),
            (Some(4), None, "iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n", "exited with code 4"),
        ] {
            let err = choose_variant(&probing(code, signal, stderr), Family::V4, None).unwrap_err();
            let text = err.to_string();
            assert_eq!(err.transient(), None, "{text}");
            assert!(
                text.contains(&format!("iptables-nft-restore {ended}"))
                    && text.contains(stderr.trim())
                    && text.contains("no iptables variant was chosen"),
                "{text}"
            );
        }
        // The same when the kernel showed nft empty (save and probe run at once).
        let fake = probing(None, Some(9), "");
        let known = |_| {
            Some(Known {
                saved: Saved::default(),
                by_tool: false,
            })
        };
        assert!(choose_variant_known(&fake, Family::V4, None, &known).is_err());
    }

    #[test]
    fn legacy_is_the_fallback_and_neither_is_an_error() {
        let fake = probing(Some(NOT_USABLE[0].0), None, NOT_USABLE[0].1);
        assert_eq!(pick(&fake).unwrap(), IptablesVariant::Legacy);
        let err = pick(&Fake::default()).unwrap_err().to_string();
        assert!(
            err.contains("no usable iptables") && err.contains("not installed"),
            "{err}"
        );
    }

    #[test]
    fn a_variant_that_cannot_be_read_stops_detection() {
        let fake = Fake::default()
            .answer("iptables-legacy-save", 1, "")
            .answer("iptables-nft-save", 0, OURS);
        let err = pick(&fake).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("iptables-legacy-save"),
            "{err}"
        );
        // Not installed is not a read failure.
        let fake = Fake::default().answer("iptables-nft-save", 0, OURS);
        assert_eq!(pick(&fake).unwrap(), IptablesVariant::Nft);
    }

    #[test]
    fn forcing_a_variant_checks_its_tools_exist() {
        let fake = Fake::default().answer("ip6tables-legacy-save", 0, EMPTY);
        let err = choose_variant(&fake, Family::V6, Some(IptablesVariant::Nft))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ip6tables-nft-save") && err.contains("not installed"),
            "{err}"
        );
        let chosen = choose_variant(&fake, Family::V6, Some(IptablesVariant::Legacy)).unwrap();
        assert_eq!(chosen.tools.restore(), "ip6tables-legacy-restore");
        assert!(matches!(chosen.reason, Why::Forced));
        assert_eq!(
            chosen.reason.to_string(),
            "--force-iptables-binary asks for it"
        );
    }

    #[test]
    fn only_iptables_before_1_8_8_is_taken_to_print_rules_without_their_matches() {
        assert!(older_than_1_8_8("iptables-nft-save v1.8.7 (nf_tables)"));
        assert!(older_than_1_8_8("iptables-save v1.6.1"));
        assert!(!older_than_1_8_8("iptables-nft-save v1.8.8 (nf_tables)"));
        assert!(!older_than_1_8_8("iptables-nft-save v1.8.11 (nf_tables)"));
        assert!(!older_than_1_8_8("ip6tables-nft-save v1.10.0 (nf_tables)"));
        assert!(!older_than_1_8_8("iptables-nft-save (version unknown)"));
    }

    #[test]
    fn kernel_hints_name_the_missing_piece() {
        let hint = |stderr| {
            kernel_hint(stderr)
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        assert!(
            hint("Couldn't load target `TPROXY':No such file or directory").contains("xt_TPROXY")
        );
        assert!(
            hint("iptables-restore v1.8.9: unable to initialize table 'nat'").contains("nat table")
        );
        assert_eq!(kernel_hint("Bad argument `x'"), None);
    }

    #[test]
    fn legacy_restores_wait_for_the_lock_and_nft_ones_do_not() {
        let fake = Fake::default()
            .answer("iptables-legacy-restore", 0, "")
            .answer("ip6tables-nft-restore", 0, "");
        let legacy = Tools {
            family: Family::V4,
            variant: IptablesVariant::Legacy,
        };
        let nft = Tools {
            family: Family::V6,
            variant: IptablesVariant::Nft,
        };
        let host_lock = XtablesLock {
            wait: Duration::from_secs(30),
            file: None,
        };
        let pod_lock = XtablesLock {
            file: Some("/run/meshinit/x.lock".into()),
            ..host_lock.clone()
        };
        restore(&fake, legacy, "", true, &host_lock).unwrap();
        restore(&fake, nft, "", false, &host_lock).unwrap();
        restore(&fake, legacy, "", true, &pod_lock).unwrap();
        restore(&fake, nft, "", true, &pod_lock).unwrap();
        assert_eq!(
            *fake.calls.lock().unwrap(),
            [
                "iptables-legacy-restore --noflush --wait=30",
                "ip6tables-nft-restore",
                "XTABLES_LOCKFILE=/run/meshinit/x.lock iptables-legacy-restore --noflush --wait=30",
                "ip6tables-nft-restore --noflush",
            ]
        );
    }
}

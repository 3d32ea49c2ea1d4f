//! The operating system around the rules: processes (`process`), privileges and network
//! namespaces (`privileges`), the per-namespace lock (`lock`), procfs (`procfs`), the group
//! file (`groups`), the CNI node files (`cni_files`), the stderr redirect (`logfile`).

pub mod cni_files;
pub mod groups;
pub mod lock;
pub mod logfile;
pub mod privileges;
pub mod process;
pub mod procfs;
pub mod transient;

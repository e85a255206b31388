//! Runtime generations as data: every name and shape that differs between the versions of
//! the runtime podfs serves, in one table.
//!
//! The runtime was renamed twice while its on-disk registry and socket protocol kept the same
//! structure: insomnia pods (commit 5472ceca), yoi pods (June 2026, renamed variables only),
//! and yoi workers (up to commit 485918eb, files and fields renamed `worker`). The layer that
//! reads the runtime's files and speaks its protocol ([`crate::paths`], [`crate::store`],
//! [`crate::protocol`]) looks names up here; nothing above it knows which generation it serves.

use std::fmt;

/// Where a base directory defaults to when no variable sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// `$HOME/<path>`.
    Home(&'static str),
    /// `$<xdg>/<sub>` when that variable is set, else `$HOME/<path>`.
    Xdg {
        var: &'static str,
        sub: &'static str,
        home: &'static str,
    },
}

/// The environment variables of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Env {
    /// Puts data in H, runtime files in H/run, config in H/config.
    pub home: &'static str,
    pub data_dir: &'static str,
    pub runtime_dir: &'static str,
    pub config_dir: &'static str,
}

/// One generation of the runtime.
#[derive(Debug, PartialEq, Eq)]
pub struct Generation {
    /// The name `--generation` takes and the first log line shows.
    pub id: &'static str,
    /// What users call one process of this generation ("pod", "worker").
    pub unit: &'static str,
    /// The commits and dates this entry describes.
    pub versions: &'static str,
    /// Whether golden fixtures from a real run back this entry.
    pub fixtures: bool,
    pub env: Env,
    pub data_default: Default,
    pub runtime_default: Default,
    pub config_default: Default,
    /// `<data>/<store_dir>/<name>/metadata.json`.
    pub store_dir: &'static str,
    /// `<runtime>/<alloc_file>`, the machine-wide allocation table.
    pub alloc_file: &'static str,
    /// `<runtime>/<name>/<mirror_file>`, a live parent's mirror of its registry.
    pub mirror_file: &'static str,
    /// The key that holds a name in every file and in lifecycle events.
    pub name_key: &'static str,
    /// The method a child uses to report to its parent (`shut_down`, `turn_ended`).
    pub lifecycle_method: &'static str,
}

pub const INSOMNIA_5472: Generation = Generation {
    id: "insomnia-5472",
    unit: "pod",
    versions: "insomnia pods, yoi commits up to 2026-05-31 (golden files from 5472ceca)",
    fixtures: true,
    env: Env {
        home: "INSOMNIA_HOME",
        data_dir: "INSOMNIA_DATA_DIR",
        runtime_dir: "INSOMNIA_RUNTIME_DIR",
        config_dir: "INSOMNIA_CONFIG_DIR",
    },
    data_default: Default::Home(".insomnia"),
    runtime_default: Default::Xdg {
        var: "XDG_RUNTIME_DIR",
        sub: "insomnia",
        home: ".insomnia/run",
    },
    config_default: Default::Xdg {
        var: "XDG_CONFIG_HOME",
        sub: "insomnia",
        home: ".config/insomnia",
    },
    store_dir: "pods",
    alloc_file: "pods.json",
    mirror_file: "spawned_pods.json",
    name_key: "pod_name",
    lifecycle_method: "pod_event",
};

/// The month after the rename to yoi: new variables and directories, old file and field
/// names. No fixture backs it; it differs from insomnia only in where the home is.
pub const YOI_POD: Generation = Generation {
    id: "yoi-pod",
    unit: "pod",
    versions: "yoi pods, 2026-06-01 to 2026-06-26 (no golden files; names from the history)",
    fixtures: false,
    env: Env {
        home: "YOI_HOME",
        data_dir: "YOI_DATA_DIR",
        runtime_dir: "YOI_RUNTIME_DIR",
        config_dir: "YOI_CONFIG_DIR",
    },
    data_default: Default::Home(".yoi"),
    runtime_default: Default::Xdg {
        var: "XDG_RUNTIME_DIR",
        sub: "yoi",
        home: ".yoi/run",
    },
    config_default: Default::Xdg {
        var: "XDG_CONFIG_HOME",
        sub: "yoi",
        home: ".config/yoi",
    },
    store_dir: "pods",
    alloc_file: "pods.json",
    mirror_file: "spawned_pods.json",
    name_key: "pod_name",
    lifecycle_method: "pod_event",
};

pub const YOI_WORKER_485918EB: Generation = Generation {
    id: "yoi-worker-485918eb",
    unit: "worker",
    versions: "yoi workers with process sub-workers, 2026-06-29 (17a9488a) to 2026-08-06 \
               (485918eb, golden files)",
    fixtures: true,
    env: Env {
        home: "YOI_HOME",
        data_dir: "YOI_DATA_DIR",
        runtime_dir: "YOI_RUNTIME_DIR",
        config_dir: "YOI_CONFIG_DIR",
    },
    data_default: Default::Xdg {
        var: "XDG_DATA_HOME",
        sub: "yoi",
        home: ".local/share/yoi",
    },
    runtime_default: Default::Xdg {
        var: "XDG_RUNTIME_DIR",
        sub: "yoi",
        home: ".yoi/run",
    },
    config_default: Default::Xdg {
        var: "XDG_CONFIG_HOME",
        sub: "yoi",
        home: ".config/yoi",
    },
    store_dir: "workers",
    alloc_file: "workers.json",
    mirror_file: "spawned_workers.json",
    name_key: "worker_name",
    lifecycle_method: "worker_event",
};

/// Every generation podfs serves, most recent last.
pub const ALL: [&Generation; 3] = [&INSOMNIA_5472, &YOI_POD, &YOI_WORKER_485918EB];

impl Generation {
    pub fn by_id(id: &str) -> Option<&'static Generation> {
        ALL.into_iter().find(|g| g.id == id)
    }

    /// The ids as alternatives, for messages: `a|b|c`.
    pub fn ids() -> String {
        ALL.iter().map(|g| g.id).collect::<Vec<_>>().join("|")
    }

    /// `--generation NAME` on the command line: one of the ids, which shells complete.
    pub fn value_parser() -> impl clap::builder::TypedValueParser<Value = &'static Generation> {
        use clap::builder::TypedValueParser;
        clap::builder::PossibleValuesParser::new(ALL.map(|g| g.id))
            .map(|id| Generation::by_id(&id).unwrap_or(ALL[0]))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_found() {
        for g in ALL {
            assert_eq!(Generation::by_id(g.id), Some(g));
        }
        assert_eq!(Generation::by_id("nope"), None);
        assert!(Generation::ids().contains("yoi-worker-485918eb"));
    }

    #[test]
    fn the_pod_era_differs_from_insomnia_only_in_where_the_home_is() {
        let (a, b) = (&INSOMNIA_5472, &YOI_POD);
        assert_eq!(
            (
                a.store_dir,
                a.alloc_file,
                a.mirror_file,
                a.name_key,
                a.lifecycle_method
            ),
            (
                b.store_dir,
                b.alloc_file,
                b.mirror_file,
                b.name_key,
                b.lifecycle_method
            )
        );
        assert_ne!(a.env, b.env);
    }
}

//! Where the runtime keeps its files, resolved exactly as the runtime of each generation
//! resolves them, and which generation a home belongs to.
//!
//! The precedence table is the runtime's (reference, section 1): the specific variable, then
//! the home variable, then an XDG variable where the runtime reads one, then a default under
//! `$HOME`. podfs adds only command-line overrides on top, so that `podfs mount --home H`
//! and `INSOMNIA_HOME=H insomnia-pod ...` (or `YOI_HOME=H yoi worker ...`) look at the same
//! files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::generation::{self, Default, Generation};
use crate::name::PodName;

/// The base directories of one home, and the generation whose names apply there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub data: PathBuf,
    pub runtime: PathBuf,
    pub config: PathBuf,
    pub generation: &'static Generation,
}

/// Command-line overrides, stronger than any environment variable.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub home: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    /// `--generation`: skip detection.
    pub generation: Option<&'static Generation>,
}

/// How a home was found, for the first log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub paths: Paths,
    /// Where the data dir came from: "--home", "YOI_HOME", "default", ...
    pub source: String,
    /// Where the runtime dir came from: "--runtime-dir", "INSOMNIA_RUNTIME_DIR", "--home",
    /// "INSOMNIA_HOME", "XDG_RUNTIME_DIR", "default".
    pub runtime_source: String,
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// An environment variable as the runtime reads it: empty or non-UTF-8 counts as unset.
fn var(lookup: Lookup, key: &str) -> Option<PathBuf> {
    let value = lookup(key)?;
    let text = value.to_str()?;
    (!text.is_empty()).then(|| PathBuf::from(text))
}

fn home_dir(lookup: Lookup) -> Result<PathBuf> {
    var(lookup, "HOME").ok_or_else(|| {
        Error::Usage("cannot locate the runtime home: HOME is unset; pass --home DIR".into())
    })
}

fn default_dir(default: Default, lookup: Lookup) -> Result<PathBuf> {
    match default {
        Default::Home(rel) => Ok(home_dir(lookup)?.join(rel)),
        Default::Xdg { var: v, sub, home } => match var(lookup, v) {
            Some(base) => Ok(base.join(sub)),
            None => Ok(home_dir(lookup)?.join(home)),
        },
    }
}

impl Paths {
    /// Resolve the three base directories with `gen`'s rules. `--home H` behaves like the
    /// home variable and beats the more specific variables too: a user who names a home on
    /// the command line means that home.
    pub fn resolve(gen: &'static Generation, o: &Overrides, lookup: Lookup) -> Result<Paths> {
        let env = |key| {
            if o.home.is_some() {
                None
            } else {
                var(lookup, key)
            }
        };
        let home = o.home.clone().or_else(|| env(gen.env.home));
        let data = match (&o.data_dir, env(gen.env.data_dir), &home) {
            (Some(dir), _, _) => dir.clone(),
            (None, Some(dir), _) => dir,
            (None, None, Some(h)) => h.clone(),
            (None, None, None) => default_dir(gen.data_default, lookup)?,
        };
        let runtime = match (&o.runtime_dir, env(gen.env.runtime_dir), &home) {
            (Some(dir), _, _) => dir.clone(),
            (None, Some(dir), _) => dir,
            (None, None, Some(h)) => h.join("run"),
            (None, None, None) => default_dir(gen.runtime_default, lookup)?,
        };
        let config = match (env(gen.env.config_dir), &home) {
            (Some(dir), _) => dir,
            (None, Some(h)) => h.join("config"),
            (None, None) => default_dir(gen.config_default, lookup)?,
        };
        Ok(Paths {
            data,
            runtime,
            config,
            generation: gen,
        })
    }

    /// Paths for a home laid out like `INSOMNIA_HOME=home` (or `YOI_HOME=home`).
    pub fn for_home(home: &Path, generation: &'static Generation) -> Self {
        Paths {
            data: home.to_path_buf(),
            runtime: home.join("run"),
            config: home.join("config"),
            generation,
        }
    }

    /// `<data>/pods` or `<data>/workers`: one directory per pod with its `metadata.json`.
    pub fn store_dir(&self) -> PathBuf {
        self.data.join(self.generation.store_dir)
    }

    pub fn pod_dir(&self, pod: &PodName) -> PathBuf {
        self.store_dir().join(pod.as_str())
    }

    pub fn metadata(&self, pod: &PodName) -> PathBuf {
        self.pod_dir(pod).join("metadata.json")
    }

    /// `pods.json` or `workers.json`.
    pub fn alloc_table(&self) -> PathBuf {
        self.runtime.join(self.generation.alloc_file)
    }

    pub fn pod_runtime_dir(&self, pod: &PodName) -> PathBuf {
        self.runtime.join(pod.as_str())
    }

    /// The runtime names the socket `sock`, not `socket`.
    pub fn socket(&self, pod: &PodName) -> PathBuf {
        self.pod_runtime_dir(pod).join("sock")
    }

    /// `spawned_pods.json` or `spawned_workers.json`.
    pub fn mirror(&self, pod: &PodName) -> PathBuf {
        self.pod_runtime_dir(pod).join(self.generation.mirror_file)
    }

    /// Whether the data dir holds this generation's store (`pods/` or `workers/`).
    fn has_store(&self) -> bool {
        self.store_dir().is_dir()
    }
}

/// Find the home to serve and its generation, the way the runtime of each generation would
/// find it: `--home`/`--data-dir`, then each generation's variables, then their defaults.
/// The generation is read off the disk (`pods/` or `workers/` in the data dir) unless
/// `--generation` forces one. An empty, missing or ambiguous home is an error that names the
/// possibilities.
pub fn locate(o: &Overrides, lookup: Lookup) -> Result<Located> {
    if let Some(gen) = o.generation {
        let paths = Paths::resolve(gen, o, lookup)?;
        let source = source_of(gen, o, lookup);
        let runtime_source = runtime_source_of(gen, o, lookup);
        if !paths.has_store() {
            // Forcing a generation onto a home of another would mount an empty tree.
            let other = generation::ALL
                .into_iter()
                .find(|g| g.store_dir != gen.store_dir && paths.data.join(g.store_dir).is_dir());
            if let Some(other) = other {
                return Err(Error::Usage(format!(
                    "--generation {}: {} has no {}/ but has {}/, the layout of {}; drop \
                     --generation or name that one",
                    gen.id,
                    paths.data.display(),
                    gen.store_dir,
                    other.store_dir,
                    other.id
                )));
            }
            tracing::warn!(home = %paths.data.display(), store = gen.store_dir,
                "the home has no {}/ yet: the mount starts empty", gen.store_dir);
        }
        return Ok(Located {
            paths,
            source,
            runtime_source,
        });
    }
    // Each candidate: a generation, its resolution, and whether an explicit setting (flag
    // or variable) chose that data dir rather than a default.
    let mut candidates: Vec<(Paths, String, bool)> = Vec::new();
    for gen in generation::ALL {
        let source = source_of(gen, o, lookup);
        let explicit = source != "default";
        // A variable of another family must not make this family's default count.
        if let Ok(paths) = Paths::resolve(gen, o, lookup) {
            candidates.push((paths, source, explicit));
        }
    }
    let explicit: Vec<_> = candidates.iter().filter(|c| c.2).collect();
    let pool: Vec<_> = if explicit.is_empty() {
        candidates.iter().collect()
    } else {
        explicit
    };
    let found: Vec<_> = pool.iter().filter(|c| c.0.has_store()).collect();
    // Two generations with the same store layout on the same data dir are one home; the
    // insomnia entry comes first and behaves identically.
    let mut distinct: Vec<&&(Paths, String, bool)> = Vec::new();
    for c in &found {
        let same = distinct.iter().any(|d| {
            d.0.data == c.0.data
                && d.0.generation.store_dir == c.0.generation.store_dir
                && d.0.generation.name_key == c.0.generation.name_key
        });
        if !same {
            distinct.push(c);
        }
    }
    match distinct.as_slice() {
        [one] => Ok(Located {
            paths: one.0.clone(),
            source: one.1.clone(),
            runtime_source: runtime_source_of(one.0.generation, o, lookup),
        }),
        [] => {
            const LAYOUTS: &str = "pods/<name>/metadata.json (insomnia, yoi pods) or \
                                   workers/<name>/metadata.json (yoi workers)";
            if let Some(dir) = o.data_dir.as_ref().or(o.home.as_ref()) {
                let flag = if o.data_dir.is_some() {
                    "--data-dir"
                } else {
                    "--home"
                };
                let what = if dir.is_dir() {
                    "holds no runtime home"
                } else {
                    "does not exist"
                };
                return Err(Error::Usage(format!(
                    "{flag} {}: {what}\nhint: a home has {LAYOUTS}\nhint: a home not used \
                     yet also needs --generation {}",
                    dir.display(),
                    Generation::ids()
                )));
            }
            // Each place looked at once, however many generations would use it.
            let mut looked: Vec<String> = Vec::new();
            for c in &pool {
                let store = c.0.store_dir().display().to_string();
                if !looked.contains(&store) {
                    looked.push(store);
                }
            }
            let places = match looked.as_slice() {
                [] => String::new(),
                [one] => one.clone(),
                [init @ .., last] => format!("{} or {last}", init.join(", ")),
            };
            Err(Error::Usage(format!(
                "no runtime home found at {places}\nhint: name one with --home DIR; a home not \
                 used yet also needs --generation {}",
                Generation::ids()
            )))
        }
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|c| format!("{} ({})", c.0.store_dir().display(), c.0.generation.id))
                .collect();
            Err(Error::Usage(format!(
                "ambiguous home: found {}; choose one with --home DIR or --generation {}",
                names.join(" and "),
                Generation::ids()
            )))
        }
    }
}

/// Which setting chose the data dir of `gen`.
fn source_of(gen: &Generation, o: &Overrides, lookup: Lookup) -> String {
    if o.data_dir.is_some() {
        "--data-dir".into()
    } else if o.home.is_some() {
        "--home".into()
    } else if var(lookup, gen.env.data_dir).is_some() {
        gen.env.data_dir.into()
    } else if var(lookup, gen.env.home).is_some() {
        gen.env.home.into()
    } else {
        "default".into()
    }
}

/// Which setting chose the runtime dir of `gen` (the order of [`Paths::resolve`]).
fn runtime_source_of(gen: &Generation, o: &Overrides, lookup: Lookup) -> String {
    if o.runtime_dir.is_some() {
        "--runtime-dir".into()
    } else if o.home.is_some() {
        "--home".into()
    } else if var(lookup, gen.env.runtime_dir).is_some() {
        gen.env.runtime_dir.into()
    } else if var(lookup, gen.env.home).is_some() {
        gen.env.home.into()
    } else {
        match gen.runtime_default {
            Default::Xdg { var: v, .. } if var(lookup, v).is_some() => format!("the {v} rule"),
            _ => "default".into(),
        }
    }
}

/// [`locate`] with the process environment.
pub fn locate_from_env(o: &Overrides) -> Result<Located> {
    locate(o, &|key| std::env::var_os(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{INSOMNIA_5472, YOI_POD, YOI_WORKER_485918EB};
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(gen: &'static Generation, pairs: &[(&str, &str)]) -> Paths {
        Paths::resolve(gen, &Overrides::default(), &env(pairs)).unwrap()
    }

    #[test]
    fn insomnia_defaults_follow_home() {
        let p = resolve(&INSOMNIA_5472, &[("HOME", "/h")]);
        assert_eq!(p.data, PathBuf::from("/h/.insomnia"));
        assert_eq!(p.runtime, PathBuf::from("/h/.insomnia/run"));
        assert_eq!(p.config, PathBuf::from("/h/.config/insomnia"));
    }

    #[test]
    fn xdg_dirs_apply_only_to_runtime_and_config() {
        let p = resolve(
            &INSOMNIA_5472,
            &[
                ("HOME", "/h"),
                ("XDG_RUNTIME_DIR", "/run/user/7"),
                ("XDG_CONFIG_HOME", "/c"),
                ("XDG_DATA_HOME", "/d"),
            ],
        );
        assert_eq!(p.data, PathBuf::from("/h/.insomnia"));
        assert_eq!(p.runtime, PathBuf::from("/run/user/7/insomnia"));
        assert_eq!(p.config, PathBuf::from("/c/insomnia"));
    }

    #[test]
    fn insomnia_home_beats_xdg() {
        let p = resolve(
            &INSOMNIA_5472,
            &[
                ("HOME", "/h"),
                ("INSOMNIA_HOME", "/i"),
                ("XDG_RUNTIME_DIR", "/run/user/7"),
            ],
        );
        assert_eq!(p, Paths::for_home(Path::new("/i"), &INSOMNIA_5472));
    }

    #[test]
    fn specific_variables_beat_insomnia_home() {
        let p = resolve(
            &INSOMNIA_5472,
            &[
                ("INSOMNIA_HOME", "/i"),
                ("INSOMNIA_DATA_DIR", "/d"),
                ("INSOMNIA_RUNTIME_DIR", "/r"),
                ("INSOMNIA_CONFIG_DIR", "/c"),
            ],
        );
        assert_eq!(
            (p.data, p.runtime, p.config),
            ("/d".into(), "/r".into(), "/c".into())
        );
    }

    #[test]
    fn yoi_worker_defaults_use_xdg_data_home() {
        let p = resolve(&YOI_WORKER_485918EB, &[("HOME", "/h")]);
        assert_eq!(p.data, PathBuf::from("/h/.local/share/yoi"));
        assert_eq!(p.runtime, PathBuf::from("/h/.yoi/run"));
        assert_eq!(p.config, PathBuf::from("/h/.config/yoi"));
        let p = resolve(
            &YOI_WORKER_485918EB,
            &[
                ("HOME", "/h"),
                ("XDG_DATA_HOME", "/xd"),
                ("XDG_RUNTIME_DIR", "/run/user/7"),
            ],
        );
        assert_eq!(p.data, PathBuf::from("/xd/yoi"));
        assert_eq!(p.runtime, PathBuf::from("/run/user/7/yoi"));
        let p = resolve(&YOI_WORKER_485918EB, &[("YOI_HOME", "/y"), ("HOME", "/h")]);
        assert_eq!(p, Paths::for_home(Path::new("/y"), &YOI_WORKER_485918EB));
        let p = resolve(&YOI_POD, &[("HOME", "/h")]);
        assert_eq!(p.data, PathBuf::from("/h/.yoi"));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let p = resolve(
            &INSOMNIA_5472,
            &[
                ("HOME", "/h"),
                ("INSOMNIA_HOME", ""),
                ("INSOMNIA_DATA_DIR", ""),
            ],
        );
        assert_eq!(p.data, PathBuf::from("/h/.insomnia"));
    }

    #[test]
    fn missing_home_variable_is_a_usage_error() {
        let err = Paths::resolve(&INSOMNIA_5472, &Overrides::default(), &env(&[])).unwrap_err();
        assert!(matches!(err, Error::Usage(_)));
    }

    #[test]
    fn command_line_overrides_win() {
        let o = Overrides {
            home: Some("/cli".into()),
            runtime_dir: Some("/rt".into()),
            ..Overrides::default()
        };
        let p = Paths::resolve(&INSOMNIA_5472, &o, &env(&[("INSOMNIA_DATA_DIR", "/d")])).unwrap();
        assert_eq!(p.data, PathBuf::from("/cli"));
        assert_eq!(p.runtime, PathBuf::from("/rt"));
    }

    #[test]
    fn file_locations_per_generation() {
        let lead = PodName::new("lead").unwrap();
        let p = Paths::for_home(Path::new("/i"), &INSOMNIA_5472);
        assert_eq!(
            p.metadata(&lead),
            PathBuf::from("/i/pods/lead/metadata.json")
        );
        assert_eq!(p.socket(&lead), PathBuf::from("/i/run/lead/sock"));
        assert_eq!(p.alloc_table(), PathBuf::from("/i/run/pods.json"));
        assert_eq!(
            p.mirror(&lead),
            PathBuf::from("/i/run/lead/spawned_pods.json")
        );
        let w = Paths::for_home(Path::new("/y"), &YOI_WORKER_485918EB);
        assert_eq!(
            w.metadata(&lead),
            PathBuf::from("/y/workers/lead/metadata.json")
        );
        assert_eq!(w.alloc_table(), PathBuf::from("/y/run/workers.json"));
        assert_eq!(
            w.mirror(&lead),
            PathBuf::from("/y/run/lead/spawned_workers.json")
        );
        assert_eq!(w.socket(&lead), PathBuf::from("/y/run/lead/sock"));
    }

    fn home_with(dirs: &[&str]) -> tempfile::TempDir {
        let dir = crate::test_fixtures::tempdir();
        for d in dirs {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        dir
    }

    #[test]
    fn the_generation_is_read_off_the_disk() {
        let insomnia = home_with(&["pods"]);
        let workers = home_with(&["workers"]);
        let both = home_with(&["pods", "workers"]);
        let empty = home_with(&[]);
        let with_home = |d: &tempfile::TempDir| Overrides {
            home: Some(d.path().to_path_buf()),
            ..Overrides::default()
        };
        let none = env(&[("HOME", "/nonexistent")]);
        let got = locate(&with_home(&insomnia), &none).unwrap();
        assert_eq!(got.paths.generation, &INSOMNIA_5472);
        assert_eq!(got.source, "--home");
        assert_eq!(got.runtime_source, "--home");
        let got = locate(&with_home(&workers), &none).unwrap();
        assert_eq!(got.paths.generation, &YOI_WORKER_485918EB);
        for d in [&both, &empty] {
            let err = locate(&with_home(d), &none).unwrap_err();
            assert!(matches!(err, Error::Usage(_)));
            let text = err.to_string();
            assert!(
                text.contains("insomnia") && text.contains("yoi-worker"),
                "{text}"
            );
        }
        let mut forced = with_home(&empty);
        forced.generation = Some(&YOI_WORKER_485918EB);
        assert_eq!(
            locate(&forced, &none).unwrap().paths.generation,
            &YOI_WORKER_485918EB
        );
        // Forcing a generation onto a home laid out for another is refused: it would
        // mount an empty tree.
        let mut wrong = with_home(&workers);
        wrong.generation = Some(&INSOMNIA_5472);
        assert!(matches!(locate(&wrong, &none), Err(Error::Usage(_))));
        let missing = Overrides {
            home: Some(PathBuf::from("/nonexistent/home")),
            ..Overrides::default()
        };
        let err = locate(&missing, &none).unwrap_err();
        assert!(matches!(err, Error::Usage(_)));
        // The home given is named once, not once per generation that would use it.
        assert_eq!(
            err.to_string().matches("/nonexistent/home").count(),
            1,
            "{err}"
        );
    }

    #[test]
    fn each_generation_is_found_through_its_own_variables_and_defaults() {
        let workers = home_with(&["workers"]);
        let w = workers.path().to_str().unwrap();
        let got = locate(
            &Overrides::default(),
            &env(&[("YOI_HOME", w), ("HOME", "/x")]),
        )
        .unwrap();
        assert_eq!(got.paths.generation, &YOI_WORKER_485918EB);
        assert_eq!(got.source, "YOI_HOME");
        assert_eq!(got.runtime_source, "YOI_HOME");
        assert_eq!(got.paths.runtime, workers.path().join("run"));

        let pods = home_with(&["pods"]);
        let i = pods.path().to_str().unwrap();
        let got = locate(&Overrides::default(), &env(&[("INSOMNIA_HOME", i)])).unwrap();
        assert_eq!(got.paths.generation, &INSOMNIA_5472);
        // A YOI_HOME holding pods/ is the transitional yoi pod era.
        let got = locate(&Overrides::default(), &env(&[("YOI_HOME", i)])).unwrap();
        assert_eq!(got.paths.generation, &YOI_POD);

        // Defaults: a user home with both runtimes installed is ambiguous.
        let user = home_with(&[".insomnia/pods", ".local/share/yoi/workers"]);
        let u = user.path().to_str().unwrap();
        let err = locate(&Overrides::default(), &env(&[("HOME", u)])).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
        let only = home_with(&[".local/share/yoi/workers"]);
        let got = locate(
            &Overrides::default(),
            &env(&[("HOME", only.path().to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(got.paths.generation, &YOI_WORKER_485918EB);
        assert_eq!(got.source, "default");
    }
}

//! Where the runtime keeps its files, resolved exactly as the runtime resolves them.
//!
//! The precedence table is the runtime's (see the runtime reference, section 1); podfs adds
//! only command-line overrides on top, so that `podfs mount --home H` and
//! `INSOMNIA_HOME=H insomnia-pod ...` look at the same files.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The base directories podfs needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub data: PathBuf,
    pub runtime: PathBuf,
    pub config: PathBuf,
}

/// Command-line overrides, stronger than any environment variable.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub home: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
}

impl Paths {
    /// Resolve from the process environment.
    pub fn from_env(overrides: &Overrides) -> Result<Self> {
        Self::resolve(overrides, |key| std::env::var_os(key))
    }

    /// Resolve with an explicit environment lookup (so tests need not touch the real one).
    /// An empty or non-UTF-8 variable counts as unset, as in the runtime.
    pub fn resolve<F>(overrides: &Overrides, lookup: F) -> Result<Self>
    where
        F: Fn(&str) -> Option<std::ffi::OsString>,
    {
        let var = |key: &str| -> Option<PathBuf> {
            let value = lookup(key)?;
            let text = value.to_str()?;
            (!text.is_empty()).then(|| PathBuf::from(text))
        };
        // `--home H` behaves like INSOMNIA_HOME=H, and beats the more specific variables too,
        // because a user who names a home on the command line means that home.
        let (insomnia_home, env_data, env_runtime, env_config) = match &overrides.home {
            Some(home) => (Some(home.clone()), None, None, None),
            None => (
                var("INSOMNIA_HOME"),
                var("INSOMNIA_DATA_DIR"),
                var("INSOMNIA_RUNTIME_DIR"),
                var("INSOMNIA_CONFIG_DIR"),
            ),
        };
        let home = || {
            var("HOME").ok_or_else(|| {
                Error::Usage(
                    "cannot locate the insomnia home: HOME is unset; pass --home DIR".into(),
                )
            })
        };

        let data = match (&overrides.data_dir, env_data, &insomnia_home) {
            (Some(dir), _, _) => dir.clone(),
            (None, Some(dir), _) => dir,
            (None, None, Some(h)) => h.clone(),
            (None, None, None) => home()?.join(".insomnia"),
        };
        let runtime = match (&overrides.runtime_dir, env_runtime, &insomnia_home) {
            (Some(dir), _, _) => dir.clone(),
            (None, Some(dir), _) => dir,
            (None, None, Some(h)) => h.join("run"),
            (None, None, None) => match var("XDG_RUNTIME_DIR") {
                Some(xdg) => xdg.join("insomnia"),
                None => home()?.join(".insomnia").join("run"),
            },
        };
        let config = match (env_config, &insomnia_home) {
            (Some(dir), _) => dir,
            (None, Some(h)) => h.join("config"),
            (None, None) => match var("XDG_CONFIG_HOME") {
                Some(xdg) => xdg.join("insomnia"),
                None => home()?.join(".config").join("insomnia"),
            },
        };
        Ok(Paths {
            data,
            runtime,
            config,
        })
    }

    /// Paths for a home laid out like `INSOMNIA_HOME=home`.
    pub fn for_home(home: &Path) -> Self {
        Paths {
            data: home.to_path_buf(),
            runtime: home.join("run"),
            config: home.join("config"),
        }
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.data.join("pods")
    }

    pub fn metadata(&self, pod: &str) -> PathBuf {
        self.pods_dir().join(pod).join("metadata.json")
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.data.join("sessions")
    }

    pub fn pods_json(&self) -> PathBuf {
        self.runtime.join("pods.json")
    }

    pub fn pod_runtime_dir(&self, pod: &str) -> PathBuf {
        self.runtime.join(pod)
    }

    /// The runtime names the socket `sock`, not `socket`.
    pub fn socket(&self, pod: &str) -> PathBuf {
        self.pod_runtime_dir(pod).join("sock")
    }

    pub fn spawned_pods(&self, pod: &str) -> PathBuf {
        self.pod_runtime_dir(pod).join("spawned_pods.json")
    }

    /// True when `socket` lies strictly inside the runtime dir, compared component-wise
    /// after removing `.` and refusing `..`, so that a registry entry cannot steer podfs to
    /// an arbitrary socket on the machine.
    pub fn socket_is_allowed(&self, socket: &Path) -> bool {
        use std::path::Component;
        if !socket.is_absolute() {
            return false;
        }
        if socket
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return false;
        }
        let clean: PathBuf = socket.components().collect();
        let base: PathBuf = self.runtime.components().collect();
        clean != base && clean.starts_with(&base)
    }
}

/// The runtime's pod-name rule: not empty, not `.` or `..`, no `/` and no NUL.
pub fn validate_pod_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidName(name.to_string()));
    }
    Ok(())
}

/// Same rule for names coming from the kernel, which may not be UTF-8; the runtime cannot
/// represent a non-UTF-8 name, so such names are invalid here.
pub fn pod_name_from_os(name: &OsStr) -> Result<&str> {
    let text = name
        .to_str()
        .ok_or_else(|| Error::InvalidName(name.to_string_lossy().into_owned()))?;
    validate_pod_name(text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(pairs: &[(&str, &str)]) -> Paths {
        Paths::resolve(&Overrides::default(), env(pairs)).unwrap()
    }

    #[test]
    fn defaults_follow_home() {
        let p = resolve(&[("HOME", "/h")]);
        assert_eq!(p.data, PathBuf::from("/h/.insomnia"));
        assert_eq!(p.runtime, PathBuf::from("/h/.insomnia/run"));
        assert_eq!(p.config, PathBuf::from("/h/.config/insomnia"));
    }

    #[test]
    fn xdg_dirs_apply_only_to_runtime_and_config() {
        let p = resolve(&[
            ("HOME", "/h"),
            ("XDG_RUNTIME_DIR", "/run/user/7"),
            ("XDG_CONFIG_HOME", "/c"),
        ]);
        assert_eq!(p.data, PathBuf::from("/h/.insomnia"));
        assert_eq!(p.runtime, PathBuf::from("/run/user/7/insomnia"));
        assert_eq!(p.config, PathBuf::from("/c/insomnia"));
    }

    #[test]
    fn insomnia_home_beats_xdg() {
        let p = resolve(&[
            ("HOME", "/h"),
            ("INSOMNIA_HOME", "/i"),
            ("XDG_RUNTIME_DIR", "/run/user/7"),
        ]);
        assert_eq!(p, Paths::for_home(Path::new("/i")));
    }

    #[test]
    fn specific_variables_beat_insomnia_home() {
        let p = resolve(&[
            ("INSOMNIA_HOME", "/i"),
            ("INSOMNIA_DATA_DIR", "/d"),
            ("INSOMNIA_RUNTIME_DIR", "/r"),
            ("INSOMNIA_CONFIG_DIR", "/c"),
        ]);
        assert_eq!(p.data, PathBuf::from("/d"));
        assert_eq!(p.runtime, PathBuf::from("/r"));
        assert_eq!(p.config, PathBuf::from("/c"));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let p = resolve(&[
            ("HOME", "/h"),
            ("INSOMNIA_HOME", ""),
            ("INSOMNIA_DATA_DIR", ""),
        ]);
        assert_eq!(p.data, PathBuf::from("/h/.insomnia"));
    }

    #[test]
    fn missing_home_is_a_clear_error() {
        let err = Paths::resolve(&Overrides::default(), env(&[])).unwrap_err();
        assert!(err.to_string().contains("--home"), "{err}");
    }

    #[test]
    fn command_line_overrides_win() {
        let o = Overrides {
            home: Some("/cli".into()),
            data_dir: None,
            runtime_dir: Some("/rt".into()),
        };
        let p = Paths::resolve(&o, env(&[("INSOMNIA_DATA_DIR", "/d")])).unwrap();
        assert_eq!(p.data, PathBuf::from("/cli"));
        assert_eq!(p.runtime, PathBuf::from("/rt"));
    }

    #[test]
    fn file_locations() {
        let p = Paths::for_home(Path::new("/i"));
        assert_eq!(
            p.metadata("lead"),
            PathBuf::from("/i/pods/lead/metadata.json")
        );
        assert_eq!(p.socket("lead"), PathBuf::from("/i/run/lead/sock"));
        assert_eq!(p.pods_json(), PathBuf::from("/i/run/pods.json"));
        assert_eq!(
            p.spawned_pods("lead"),
            PathBuf::from("/i/run/lead/spawned_pods.json")
        );
    }

    #[test]
    fn sockets_outside_the_runtime_dir_are_refused() {
        let p = Paths::for_home(Path::new("/i"));
        assert!(p.socket_is_allowed(Path::new("/i/run/c/sock")));
        assert!(!p.socket_is_allowed(Path::new("/i/run")));
        assert!(!p.socket_is_allowed(Path::new("/i/runner/sock")));
        assert!(!p.socket_is_allowed(Path::new("/i/run/../x/sock")));
        assert!(!p.socket_is_allowed(Path::new("run/c/sock")));
        assert!(!p.socket_is_allowed(Path::new("/tmp/sock")));
    }

    #[test]
    fn pod_names() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(validate_pod_name(bad).is_err(), "{bad:?}");
        }
        for good in ["child1", "a b", "...", ".hidden", "ünï"] {
            assert!(validate_pod_name(good).is_ok(), "{good:?}");
        }
    }
}

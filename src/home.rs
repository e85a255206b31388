//! The runtime home podfs serves: its data dir and runtime dirs, resolved and opened once at
//! start, and everything podfs reaches is reached from them.
//!
//! **Invariant: everything podfs reads, connects to or writes is reached from a directory
//! opened here at start, without following a symlink at any step below it, and belongs to
//! the home's owner.** The owner is whoever owns the data dir. The configured paths
//! themselves (`--home`, `INSOMNIA_HOME`, `XDG_RUNTIME_DIR`, ...) are the user's or the
//! administrator's choice and are followed, with one rule: a symlink on the way that is
//! not root's may only lead to a directory of the symlink's own owner (so `~/.insomnia`
//! cannot be made to lead into another user's home). Below an opened directory, the
//! [`Dir`] policy holds everything to the owner ([`crate::confine`]).
//!
//! A runtime records the path of every socket it creates. A recorded socket is served
//! only when it lies in one of the home's runtime dirs ([`Home::place`]), recognised by
//! the spelling podfs was configured with, the spelling it resolved to, or by being the
//! very same directory (so a home reached through `/home -> /data/home` or given as a
//! relative path still knows its sockets). Which runtime dirs a home has follows the
//! runtime's own rules: the one the configuration names, and, unless a runtime dir was
//! named explicitly, the one the runtime would use without a home variable
//! (`$XDG_RUNTIME_DIR/insomnia` on a desktop, where data stays in `~/.insomnia`). A socket
//! anywhere else is refused (`EACCES`), never taken as a pod that is gone.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::confine::{Dir, Policy};
use crate::error::{Error, Result};
use crate::generation::{Default, Generation};
use crate::name::PodName;
use crate::paths::Located;

/// Symlinks followed while resolving one configured path, at most (as the kernel's 40).
const MAX_LINKS: usize = 40;
/// How long a recorded directory found to be none of the home's runtime dirs is believed
/// before it is looked at again (it may be created later, under a spelling of its own).
const RECHECK_OUTSIDE: Duration = Duration::from_secs(1);

/// The most bytes podfs reads of one file of the home, for a memory budget of `budget`
/// bytes: an eighth of it, between 1 and 64 MiB (a registry of ten thousand children is a
/// few MiB; nothing a runtime writes comes near the cap).
pub fn read_cap(budget: usize) -> usize {
    (budget / 8).clamp(1 << 20, 64 << 20)
}

/// A configured path resolved: the deepest directory of it that exists (symlinks
/// followed, each checked), the names below it that do not exist yet, and the owners of
/// the non-root symlinks followed on the way.
struct Resolved {
    existing: PathBuf,
    missing: Vec<String>,
    link_owners: Vec<u32>,
}

/// Resolve an absolute `path` component by component: `..` lexically on what is already
/// resolved (which holds no symlink), each symlink's owner noted. A component that does
/// not exist ends the walk: it and the rest (plain names only) are the missing part.
fn resolve(path: &Path) -> io::Result<Resolved> {
    let mut pending: Vec<OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::RootDir | Component::Prefix(_) => None,
            other => Some(other.as_os_str().to_os_string()),
        })
        .collect();
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    let mut link_owners = Vec::new();
    while let Some(name) = pending.pop() {
        match name.to_str() {
            Some(".") => continue,
            Some("..") => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&name);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut missing = vec![name];
                missing.extend(pending.into_iter().rev());
                let missing = missing
                    .into_iter()
                    .filter(|n| n != ".")
                    .map(|n| match n.into_string() {
                        Ok(s) if s != ".." => Ok(s),
                        _ => Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "{}: a missing part of the path must be plain names",
                                path.display()
                            ),
                        )),
                    })
                    .collect::<io::Result<Vec<String>>>()?;
                return Ok(Resolved {
                    existing: resolved,
                    missing,
                    link_owners,
                });
            }
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            if meta.uid() != 0 {
                link_owners.push(meta.uid());
            }
            let target = std::fs::read_link(&candidate)?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            pending.extend(
                target
                    .components()
                    .rev()
                    .filter_map(|c| match c {
                        Component::RootDir | Component::Prefix(_) => None,
                        other => Some(other.as_os_str().to_os_string()),
                    })
                    .collect::<Vec<_>>(),
            );
            continue;
        }
        if !meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        resolved = candidate;
    }
    Ok(Resolved {
        existing: resolved,
        missing: Vec::new(),
        link_owners,
    })
}

/// `path` made absolute against the working directory, `.` components dropped.
fn absolute(path: &Path) -> io::Result<PathBuf> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    Ok(full
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect())
}

/// One directory of the home, held open from start: a configured directory (or, where
/// it does not exist yet, its deepest ancestor that does), and the names to walk below it
/// without following a symlink: those that do not exist yet, and those podfs derives
/// itself (the `run` below a home).
struct Anchor {
    /// Which setting chose it, for the log.
    rule: String,
    /// As configured (made absolute) and as resolved: the spellings a runtime may have
    /// recorded it by.
    configured: PathBuf,
    resolved: PathBuf,
    base: Mutex<Dir>,
    walk: Vec<String>,
}

impl Anchor {
    /// A configured path, followed (see [`resolve`]) up to what exists.
    fn open(configured: &Path, rule: &str, policy: &Arc<Policy>) -> io::Result<Anchor> {
        let configured = absolute(configured)?;
        let r = resolve(&configured)?;
        let base = Dir::open_base(&r.existing, policy.clone())?;
        // The directory that is there now is what any symlink on the way led to.
        let (uid, _) = base.owner()?;
        if let Some(owner) = r.link_owners.iter().find(|&&o| o != uid) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: a symlink of uid {owner} on the way leads to {}, which belongs to \
                     uid {uid}; podfs follows a user's symlink only into that user's own \
                     directories",
                    configured.display(),
                    r.existing.display()
                ),
            ));
        }
        let resolved = r.missing.iter().fold(r.existing.clone(), |p, n| p.join(n));
        Ok(Anchor {
            rule: rule.to_string(),
            configured,
            resolved,
            base: Mutex::new(base),
            walk: r.missing,
        })
    }

    /// The directory `name` below this one, walked without following a symlink.
    fn below(&self, name: &str, rule: &str) -> io::Result<Anchor> {
        let mut walk = self.walk.clone();
        walk.push(name.to_string());
        Ok(Anchor {
            rule: rule.to_string(),
            configured: self.configured.join(name),
            resolved: self.resolved.join(name),
            base: Mutex::new(self.base.lock().try_clone()?),
            walk,
        })
    }

    /// The opened base, opened again if it was deleted (and made again) since.
    fn base(&self) -> io::Result<Dir> {
        let mut base = self.base.lock();
        if base.stamp()?.nlink == 0 {
            let again = Dir::open_base(base.path(), base.policy().clone())?;
            *base = again;
        }
        base.try_clone()
    }

    /// The directory itself, reached from the base without following a symlink;
    /// `ENOENT` while it does not exist.
    fn dir(&self) -> io::Result<Dir> {
        self.base()?.walk(&self.walk)
    }

    /// Whether `dir` spells this directory as configured or as resolved.
    fn spelled(&self, dir: &Path) -> bool {
        dir == self.configured || dir == self.resolved
    }

    /// Whether `dir` is this very directory (same device and inode), by whatever name.
    fn is(&self, dir: &Path) -> bool {
        let Ok(theirs) = std::fs::metadata(dir) else {
            return false;
        };
        self.dir()
            .and_then(|d| d.stamp())
            .is_ok_and(|mine| mine.dev == theirs.dev() && mine.ino == theirs.ino())
    }
}

/// Which of the home's runtime dirs a socket lies in.
pub type RuntimeId = usize;

/// A pod socket of the home: `<runtime dir>/<pod>/sock`, as a runtime recorded it.
/// Two spellings of one socket are one socket (equality and hashing ignore the spelling).
#[derive(Debug, Clone)]
pub struct Socket {
    runtime: RuntimeId,
    pod: PodName,
    recorded: Arc<Path>,
}

impl Socket {
    /// The path as the runtime recorded it (for the log and for `socket`).
    pub fn path(&self) -> &Path {
        &self.recorded
    }

    pub fn runtime(&self) -> RuntimeId {
        self.runtime
    }

    /// The pod whose runtime directory holds the socket.
    pub fn pod(&self) -> &PodName {
        &self.pod
    }

    /// The socket of pod `pod` in the same runtime dir (a parent's, from its child's: the
    /// runtime makes both from the one runtime dir of the spawner).
    pub fn sibling(&self, pod: &PodName) -> Socket {
        let dir = self
            .recorded
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"));
        Socket {
            runtime: self.runtime,
            pod: pod.clone(),
            recorded: dir.join(pod.as_str()).join("sock").into(),
        }
    }
}

impl PartialEq for Socket {
    fn eq(&self, other: &Self) -> bool {
        (self.runtime, &self.pod) == (other.runtime, &other.pod)
    }
}
impl Eq for Socket {}
impl std::hash::Hash for Socket {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.runtime, &self.pod).hash(state)
    }
}

/// The runtime home, opened.
pub struct Home {
    generation: &'static Generation,
    owner: u32,
    read_cap: usize,
    data: Anchor,
    runtimes: Vec<Anchor>,
    /// Recorded runtime dirs already placed: which runtime dir, or none (and when that
    /// was decided).
    places: Mutex<HashMap<PathBuf, (Option<RuntimeId>, Instant)>>,
    /// Recorded runtime dirs already warned about.
    warned: Mutex<Vec<PathBuf>>,
}

/// What the home's owner's runtime would use for `default` with no variable of its own
/// set: for podfs running as that owner, its own environment; for root serving another
/// user's home, that user's login runtime dir (`/run/user/<uid>`) and home directory.
fn owner_default(default: Default, owner: u32) -> Vec<(PathBuf, String)> {
    let me = nix::unistd::geteuid().as_raw() == owner;
    let env = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let user_home = || {
        if me {
            env("HOME")
        } else {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
                .ok()
                .flatten()
                .map(|u| u.dir)
        }
    };
    let mut out = Vec::new();
    match default {
        Default::Home(rel) => {
            if let Some(h) = user_home() {
                out.push((h.join(rel), "the runtime's default".to_string()));
            }
        }
        Default::Xdg { var, sub, home } => {
            let xdg = if me {
                env(var)
            } else if var == "XDG_RUNTIME_DIR" {
                Some(PathBuf::from(format!("/run/user/{owner}")))
            } else {
                None
            };
            if let Some(x) = xdg {
                out.push((x.join(sub), format!("the {var} rule")));
            }
            if let Some(h) = user_home() {
                out.push((h.join(home), "the runtime's default".to_string()));
            }
        }
    }
    out
}

impl Home {
    /// Open the home `located` names: its data dir (which must exist, and whose owner is
    /// the home's owner) and its runtime dirs, with reads capped at `read_cap` bytes.
    pub fn open(located: &Located, read_cap: usize) -> Result<Home> {
        let paths = &located.paths;
        let generation = paths.generation;
        let refuse = |what: &str, path: &Path, e: io::Error| {
            Error::Usage(format!("{what} {}: {e}", path.display()))
        };
        let data_path = absolute(&paths.data).map_err(|e| refuse("home", &paths.data, e))?;
        let meta = std::fs::metadata(&data_path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Usage(format!(
                    "runtime home {} does not exist (a home has {}/<name>/metadata.json)",
                    data_path.display(),
                    generation.store_dir
                ))
            } else {
                refuse("home", &data_path, e)
            }
        })?;
        let owner = meta.uid();
        let policy = Arc::new(Policy {
            owner: Some(owner),
            read_cap,
        });
        let data = Anchor::open(&data_path, &located.source, &policy)
            .map_err(|e| refuse("home", &data_path, e))?;
        if !data.walk.is_empty() {
            return Err(Error::Usage(format!(
                "runtime home {} is not a directory",
                data_path.display()
            )));
        }
        let primary = Self::runtime_anchor(located, &data, &policy)
            .map_err(|e| refuse("runtime dir", &paths.runtime, e))?;
        let mut runtimes = vec![primary];
        let explicit = located.runtime_source == "--runtime-dir"
            || located.runtime_source == generation.env.runtime_dir;
        if !explicit {
            for (path, rule) in owner_default(generation.runtime_default, owner) {
                let Ok(path) = absolute(&path) else { continue };
                if runtimes.iter().any(|r| r.spelled(&path)) {
                    continue;
                }
                let anchor = match path.strip_prefix(&data.configured) {
                    Ok(rel) if rel == Path::new("run") => data.below("run", &rule),
                    _ => Anchor::open(&path, &rule, &policy),
                };
                match anchor {
                    Ok(a) if !runtimes.iter().any(|r| r.resolved == a.resolved) => runtimes.push(a),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(dir = %path.display(), error = %e, "not a runtime dir of this home")
                    }
                }
            }
        }
        Ok(Home {
            generation,
            owner,
            read_cap,
            data,
            runtimes,
            places: Mutex::new(HashMap::new()),
            warned: Mutex::new(Vec::new()),
        })
    }

    /// The runtime dir the configuration names. One a home rule puts at `<home>/run` (and
    /// the default `~/.insomnia/run` below the default data dir) is a name below the home,
    /// walked without following a symlink: the home's owner may not point it elsewhere.
    fn runtime_anchor(
        located: &Located,
        data: &Anchor,
        policy: &Arc<Policy>,
    ) -> io::Result<Anchor> {
        let paths = &located.paths;
        let runtime = absolute(&paths.runtime)?;
        let gen = paths.generation;
        let home_rule =
            located.runtime_source == "--home" || located.runtime_source == gen.env.home;
        let Some(parent) = runtime
            .parent()
            .filter(|_| runtime.file_name() == Some("run".as_ref()))
        else {
            return Anchor::open(&runtime, &located.runtime_source, policy);
        };
        if parent == data.configured {
            data.below("run", &located.runtime_source)
        } else if home_rule {
            Anchor::open(parent, &located.runtime_source, policy)?
                .below("run", &located.runtime_source)
        } else {
            Anchor::open(&runtime, &located.runtime_source, policy)
        }
    }

    /// A home podfs knows to be laid out like `INSOMNIA_HOME=home` (the demo's, tests').
    pub fn for_home(home: &Path, generation: &'static Generation) -> Result<Home> {
        let located = Located {
            paths: crate::paths::Paths::for_home(home, generation),
            source: "--home".into(),
            runtime_source: "--home".into(),
        };
        Home::open(&located, 64 << 20)
    }

    pub fn generation(&self) -> &'static Generation {
        self.generation
    }

    /// The uid the home belongs to: every file and directory podfs uses in it, and every
    /// pod that answers on one of its sockets.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The most bytes podfs reads of one file of the home.
    pub fn read_cap(&self) -> usize {
        self.read_cap
    }

    /// The data dir, as resolved at start.
    pub fn data_path(&self) -> &Path {
        &self.data.resolved
    }

    /// Every runtime dir of the home, as resolved, with the rule that chose it.
    pub fn runtime_dirs(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.runtimes
            .iter()
            .map(|r| (r.resolved.as_path(), r.rule.as_str()))
    }

    /// Every directory podfs reads or writes through (to keep a mount point away from).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.data.resolved.as_path())
            .chain(self.runtimes.iter().map(|r| r.resolved.as_path()))
    }

    /// The data dir.
    pub fn data(&self) -> io::Result<Dir> {
        self.data.dir()
    }

    /// `<data>/pods` (or `workers`): one directory per pod.
    pub fn store(&self) -> io::Result<Dir> {
        self.data()?.sub(self.generation.store_dir)
    }

    /// `<data>/pods/<pod>`.
    pub fn pod_dir(&self, pod: &PodName) -> io::Result<Dir> {
        self.store()?.sub(pod.as_str())
    }

    /// Runtime dir `id` itself; `ENOENT` while it does not exist.
    pub fn runtime(&self, id: RuntimeId) -> io::Result<Dir> {
        match self.runtimes.get(id) {
            Some(r) => r.dir(),
            None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    /// `<runtime dir of socket>/<pod of socket>`: the pod's own runtime directory.
    pub fn pod_runtime_dir(&self, socket: &Socket) -> io::Result<Dir> {
        self.runtime(socket.runtime)?.sub(socket.pod.as_str())
    }

    /// Where a recorded socket path lies: `<runtime dir>/<pod>/sock` for one of the home's
    /// runtime dirs, or `OutsideRuntimeDir` (`EACCES`: podfs does not connect there, and
    /// says once per directory in the log what to do about it).
    pub fn place(&self, recorded: &str) -> Result<Socket> {
        let outside = || Error::OutsideRuntimeDir(PathBuf::from(recorded));
        let path = Path::new(recorded);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(outside());
        }
        let path: PathBuf = path
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect();
        if path.file_name().and_then(|n| n.to_str()) != Some("sock") {
            return Err(outside());
        }
        let pod_dir = path.parent().ok_or_else(outside)?;
        let pod = pod_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| PodName::new(n).ok())
            .ok_or_else(outside)?;
        let dir = pod_dir.parent().ok_or_else(outside)?;
        let runtime = self.runtime_of(dir).ok_or_else(|| {
            self.warn_outside(dir);
            outside()
        })?;
        Ok(Socket {
            runtime,
            pod,
            recorded: path.into(),
        })
    }

    fn runtime_of(&self, dir: &Path) -> Option<RuntimeId> {
        if let Some(i) = self.runtimes.iter().position(|r| r.spelled(dir)) {
            return Some(i);
        }
        if let Some((found, at)) = self.places.lock().get(dir) {
            if found.is_some() || at.elapsed() < RECHECK_OUTSIDE {
                return *found;
            }
        }
        let found = self.runtimes.iter().position(|r| r.is(dir));
        let mut places = self.places.lock();
        if places.len() > 4096 {
            places.clear();
        }
        places.insert(dir.to_path_buf(), (found, Instant::now()));
        found
    }

    fn warn_outside(&self, dir: &Path) {
        let mut warned = self.warned.lock();
        if warned.iter().any(|w| w == dir) || warned.len() > 64 {
            return;
        }
        warned.push(dir.to_path_buf());
        let ours: Vec<String> = self
            .runtimes
            .iter()
            .map(|r| r.resolved.display().to_string())
            .collect();
        warn!(recorded = %dir.display(), runtime_dirs = %ours.join(", "),
              "children of this home record sockets in {}, which is not a runtime dir of this home \
               (owned by its owner, uid {}); podfs does not connect there and answers EACCES for them. \
               If that is this home's runtime dir, mount with --runtime-dir {}",
              dir.display(), self.owner, dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::INSOMNIA_5472;

    fn tmp() -> tempfile::TempDir {
        crate::test_fixtures::tempdir()
    }

    #[test]
    fn a_home_knows_its_sockets_by_every_spelling_and_no_others() {
        let d = tmp();
        let home = d.path().join("h");
        std::fs::create_dir_all(home.join("pods")).unwrap();
        std::fs::create_dir_all(home.join("run/child")).unwrap();
        // The same home through a symlink of the same owner, as `/home -> /data/home`.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&home, &link).unwrap();
        let h = Home::for_home(&link, &INSOMNIA_5472).unwrap();
        for spelling in [&home, &link] {
            let s = h
                .place(&format!("{}/run/child/sock", spelling.display()))
                .unwrap();
            assert_eq!((s.runtime(), s.pod().as_str()), (0, "child"));
        }
        // Through another symlink to the same directory: the very same directory.
        let other = d.path().join("other");
        std::os::unix::fs::symlink(home.join("run"), &other).unwrap();
        assert!(h.place(&format!("{}/child/sock", other.display())).is_ok());
        for bad in [
            "relative/run/child/sock".to_string(),
            format!("{}/run/child/socket", home.display()),
            format!("{}/run/../run/child/sock", home.display()),
            format!("{}/elsewhere/child/sock", home.display()),
            format!("{}/run/a/b/sock", home.display()),
            "/tmp/sock".to_string(),
        ] {
            let e = h.place(&bad).unwrap_err();
            assert_eq!(e.errno(), libc::EACCES, "{bad}");
        }
        assert_eq!(h.data_path(), home.as_path());
    }

    #[test]
    fn a_runtime_dir_that_does_not_exist_yet_is_anchored_at_its_parent() {
        let d = tmp();
        std::fs::create_dir_all(d.path().join("pods")).unwrap();
        let h = Home::for_home(d.path(), &INSOMNIA_5472).unwrap();
        let e = h.runtime(0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        std::fs::create_dir_all(d.path().join("run/p")).unwrap();
        assert!(h.runtime(0).is_ok(), "found once it is made");
        let s = h
            .place(&format!("{}/run/p/sock", d.path().display()))
            .unwrap();
        assert!(h.pod_runtime_dir(&s).is_ok());
    }

    #[test]
    fn a_symlinked_runtime_dir_inside_the_home_is_never_followed() {
        let d = tmp();
        let elsewhere = tmp();
        std::fs::create_dir_all(d.path().join("pods")).unwrap();
        std::fs::create_dir_all(elsewhere.path().join("child")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("run")).unwrap();
        let h = Home::for_home(d.path(), &INSOMNIA_5472).unwrap();
        let e = h.runtime(0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        // Its sockets are the home's by spelling, and still never reached.
        let s = h
            .place(&format!("{}/run/child/sock", d.path().display()))
            .unwrap();
        assert_eq!(
            h.pod_runtime_dir(&s).unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn resolution_reports_what_is_missing() {
        let d = tmp();
        let r = resolve(&d.path().join("a/b")).unwrap();
        assert_eq!(r.existing, d.path());
        assert_eq!(r.missing, ["a", "b"]);
        std::fs::create_dir(d.path().join("x")).unwrap();
        let r = resolve(&d.path().join("x/../y")).unwrap();
        assert_eq!(
            (r.existing.as_path(), r.missing.as_slice()),
            (d.path(), &["y".to_string()][..])
        );
        assert!(
            resolve(&d.path().join("a/../b")).is_err(),
            "`..` after a missing name"
        );
    }
}

//! What the kernel says is mounted where (`/proc/self/mountinfo`): read by the mount
//! code before and after mounting, and by the guard that watches a mount from outside.

use std::path::Path;

/// The type of the topmost mount at `path`, if `path` is a mount point.
pub fn mount_type(path: &Path) -> Option<String> {
    top_mount(path).map(|m| m.1)
}

/// The id and type of the topmost mount at `path`, from /proc/self/mountinfo (the last
/// entry for a mount point is the one on top, so search from the end).
pub fn top_mount(path: &Path) -> Option<(u64, String)> {
    let wanted = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .rev()
        .find_map(|l| {
            let mut fields = l.split(' ');
            let id = fields.next()?.parse().ok()?;
            let target = fields.nth(3)?;
            if crate::octal::unescape(target) != wanted {
                return None;
            }
            // After the optional fields comes "-", then the type.
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?.to_string();
            Some((id, fstype))
        })
}

/// The FUSE connection number of the mount with the kernel's id `id`: the minor number of
/// its device, which names it under `/sys/fs/fuse/connections/`.
pub fn fuse_connection(id: u64) -> Option<u32> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut fields = l.split(' ');
            if fields.next()?.parse::<u64>().ok()? != id {
                return None;
            }
            fields.nth(1)?.split_once(':')?.1.parse().ok()
        })
}

/// Whether the mount with the kernel's id `id` is still the top mount at `mountpoint`.
pub fn mount_is_present(id: u64, mountpoint: &Path) -> bool {
    top_mount(mountpoint).is_some_and(|(top, _)| top == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topmost_mount_is_found_without_touching_it() {
        let (root, _) = top_mount(Path::new("/")).expect("/ is a mount point");
        let (proc_id, proc_type) = top_mount(Path::new("/proc")).expect("/proc is a mount point");
        assert_ne!(root, proc_id);
        assert_eq!(proc_type, "proc");
        assert_eq!(top_mount(Path::new("/no/such/mount")), None);
        // /proc is a mount of its own device, with a minor number.
        assert!(fuse_connection(proc_id).is_some());
        assert_eq!(fuse_connection(u64::MAX), None);
    }
}

//! The runtime's files, one module each. Nothing here knows about FUSE.
//!
//! * [`metadata`]: `<store>/<pod>/metadata.json`, the durable registry (atomic rewrite).
//! * [`mirror`]: `run/<pod>/spawned_pods.json`, the live parent's mirror.
//! * [`alloc`]: `run/pods.json`, the machine-wide allocation table (flock, in place).
//! * [`atomic`]: temp file + fsync + rename, shared by the first two.
//!
//! Every file is kept as the ordered JSON object it was read as, and only the values podfs
//! changes are touched: fields podfs does not model (and fields of other generations, such
//! as yoi's `workspace_root`) survive in place, and an unchanged file rewrites to the same
//! bytes. The name key (`pod_name` or `worker_name`) comes from the generation.

pub mod alloc;
pub mod atomic;
pub mod metadata;
pub mod mirror;

use serde_json::{Map, Value};

/// The runtime writes every JSON file with serde_json's pretty printer and no trailing
/// newline; writing the same way keeps podfs's output byte-identical to the runtime's.
pub(crate) fn to_runtime_json<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("runtime types always serialise")
}

/// A JSON shape error in the style serde reports, for files that parse as JSON but do not
/// have the runtime's shape.
pub(crate) fn shape_error(what: impl std::fmt::Display) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(what)
}

/// The string at `key` of an object, or a shape error naming it.
pub(crate) fn required_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
) -> serde_json::Result<&'a str> {
    object
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| shape_error(format!("missing string field `{key}`")))
}

/// Insert `key` right after `after` (or at the end), keeping every other key in place:
/// a list the runtime omits when empty reappears where the runtime writes it.
pub(crate) fn insert_after(
    object: &mut Map<String, Value>,
    after: &[&str],
    key: &str,
    value: Value,
) {
    let position = after
        .iter()
        .filter_map(|a| object.keys().position(|k| k == a))
        .max()
        .map_or(object.len(), |i| i + 1);
    object.shift_insert(position, key.to_string(), value);
}

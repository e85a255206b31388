//! The files whose value is a field of the child's registry entry (`socket`, `scope`,
//! `callback`): a value fixed at open and made again by a read at offset 0, like sysfs, so
//! `cat` sees one consistent value and a program that polls re-reads from 0 to see a new
//! one. Each kind says only how its value reads.

use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::error::Result;
use crate::parents::ParentView;
use crate::store::metadata::ChildRecord;

use super::{Caller, ChildFile, Context, ControlFile, OpenFile, Opening, Step};
use crate::fs::body;

/// A registry field shown as a file.
pub(super) trait RegistryValue: Sync + 'static {
    const NAME: &'static str;

    fn body(record: &ChildRecord) -> Vec<u8>;
}

/// Every registry value is a read-only file of its body.
pub(super) struct Registry<V>(std::marker::PhantomData<V>);

impl<V> Registry<V> {
    pub const FILE: Registry<V> = Registry(std::marker::PhantomData);
}

impl<V: RegistryValue> ControlFile for Registry<V> {
    fn name(&self) -> &'static str {
        V::NAME
    }

    fn stat(
        &self,
        _cx: &Context,
        file: &ChildFile,
        view: &ParentView,
        _caller: &Caller,
        _now: bool,
    ) -> Step<(u64, SystemTime)> {
        let size = view.child(&file.child).map_or(0, |r| V::body(r).len());
        Step::Ready(Ok((size as u64, view.mtime())))
    }

    fn open(&self, _cx: &Context, at: Opening<'_>) -> Step<Arc<dyn OpenFile>> {
        Step::Ready(Ok(Arc::new(Open::<V> {
            bytes: Mutex::new(V::body(at.record).into()),
            file: at.file,
            kind: std::marker::PhantomData,
        })))
    }
}

struct Open<V> {
    file: ChildFile,
    bytes: Mutex<Arc<[u8]>>,
    kind: std::marker::PhantomData<fn() -> V>,
}

impl<V: RegistryValue> OpenFile for Open<V> {
    fn read(&self, cx: &Context, offset: u64, size: u32, out: &mut Vec<u8>) -> Result<()> {
        if offset == 0 {
            // A child gone since the open keeps showing the value it had.
            if let Ok(view) = cx.parents.child_view(&self.file.pod, &self.file.child) {
                if let Some(record) = view.child(&self.file.child) {
                    *self.bytes.lock() = V::body(record).into();
                }
            }
        }
        body::slice(&self.bytes.lock(), offset, size, out);
        Ok(())
    }
}

//! Label names by id, from the probe's `XDT_LABEL_NAMES`: the table as read ([`LabelTable`],
//! with the one fallback name of an id it does not name), a handle on the map ([`LabelNames`])
//! and a reader that reads it again when an event names an id it lacks ([`LabelCache`]).

use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use xdt_common::labels::{self, LabelName, MAX_LABELS};

use crate::error::{Error, Result, map_error};

/// Label names by id, as read at one moment; id 0 is never used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelTable(Vec<Option<String>>);

impl LabelTable {
    /// The name of `id` if the table has one.
    #[must_use]
    pub fn get(&self, id: u32) -> Option<&str> {
        self.0.get(id as usize).and_then(Option::as_deref)
    }

    /// The name of `id`, or `label-ID` for an id the table does not name (a label a rule set
    /// added after the table was read).
    #[must_use]
    pub fn name(&self, id: u32) -> String {
        self.get(id)
            .map_or_else(|| format!("label-{id}"), str::to_owned)
    }

    /// (id, name) of every named label, in id order.
    pub fn named(&self) -> impl Iterator<Item = (u32, &str)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(id, n)| Some((id as u32, n.as_deref()?)))
    }

    /// Ids that have no name (from 1 on), in order.
    pub fn free_ids(&self) -> impl Iterator<Item = u32> {
        self.0
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, n)| n.is_none())
            .map(|(id, _)| id as u32)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.named().count()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FromIterator<Option<String>> for LabelTable {
    fn from_iter<T: IntoIterator<Item = Option<String>>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// A handle on `XDT_LABEL_NAMES`.
pub struct LabelNames(Map);

impl std::fmt::Debug for LabelNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelNames").finish_non_exhaustive()
    }
}

impl LabelNames {
    pub(crate) fn new(data: MapData) -> Result<Self> {
        let names = Self(Map::Array(data));
        names.array()?;
        Ok(names)
    }

    fn array(&self) -> Result<Array<&MapData, LabelName>> {
        Array::try_from(&self.0).map_err(map_error(labels::NAMES_MAP, "open"))
    }

    /// A second handle on the same map (for another thread).
    pub fn try_clone(&self) -> Result<Self> {
        let Map::Array(data) = &self.0 else {
            return Err(Error::Load("XDT_LABEL_NAMES is not an array".into()));
        };
        Self::new(crate::probe::duplicate(data, labels::NAMES_MAP)?)
    }

    /// The whole table.
    pub fn read(&self) -> Result<LabelTable> {
        let array = self.array()?;
        let mut names = vec![None; MAX_LABELS as usize];
        for (id, slot) in names.iter_mut().enumerate().skip(1) {
            let name = array
                .get(&(id as u32), 0)
                .map_err(map_error(labels::NAMES_MAP, "read"))?;
            if name.len > 0 {
                let len = (name.len as usize).min(labels::MAX_NAME_LEN);
                *slot = Some(String::from_utf8_lossy(&name.bytes[..len]).into_owned());
            }
        }
        Ok(LabelTable(names))
    }

    pub(crate) fn write(&mut self, id: u32, name: &str) -> Result<()> {
        let mut entry = LabelName::EMPTY;
        entry.len = name.len() as u32;
        entry.bytes[..name.len()].copy_from_slice(name.as_bytes());
        let mut array: Array<&mut MapData, LabelName> =
            Array::try_from(&mut self.0).map_err(map_error(labels::NAMES_MAP, "open"))?;
        array
            .set(id, entry, 0)
            .map_err(map_error(labels::NAMES_MAP, "write"))
    }
}

/// Label names for a reader of events: read again when an event carries an id the table lacks
/// (a rule set added a label); an id still unnamed after that is not looked up again for a
/// second, so a stream of such events does not read the whole table per event.
#[derive(Debug)]
pub struct LabelCache {
    names: LabelNames,
    table: LabelTable,
    /// The last id the table lacked after a fresh read, and when.
    missing: Option<(u32, Instant)>,
}

impl LabelCache {
    /// Reads the table now; an empty one if that fails (events then carry `label-ID`).
    #[must_use]
    pub fn new(names: LabelNames) -> Self {
        let table = names.read().unwrap_or_default();
        Self {
            names,
            table,
            missing: None,
        }
    }

    /// The names, read again first if they lack `id`.
    pub fn covering(&mut self, id: u32) -> &LabelTable {
        let recently_missing = self
            .missing
            .is_some_and(|(m, at)| m == id && at.elapsed() < Duration::from_secs(1));
        if self.table.get(id).is_none() && !recently_missing {
            self.reread();
            if self.table.get(id).is_none() {
                self.missing = Some((id, Instant::now()));
            }
        }
        &self.table
    }

    /// Reads the table afresh (labels may have been renamed); keeps the names it had if the
    /// read fails.
    pub fn reread(&mut self) {
        self.missing = None;
        if let Ok(fresher) = self.names.read() {
            self.table = fresher;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_ids_fall_back_to_their_number() {
        let table: LabelTable = [None, Some("web".to_owned()), None].into_iter().collect();
        assert_eq!(table.name(1), "web");
        assert_eq!(table.name(2), "label-2");
        assert_eq!(table.name(900), "label-900");
        assert_eq!(table.named().collect::<Vec<_>>(), [(1, "web")]);
        assert_eq!(table.free_ids().collect::<Vec<_>>(), [2]);
        assert_eq!(table.len(), 1);
    }
}

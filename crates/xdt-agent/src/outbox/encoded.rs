//! Wire values (events, flow records) kept as their encodings from the moment the agent has
//! them until central acknowledges them: about 43 bytes for a sampled event instead of a decoded
//! value of some 100 bytes with two heap strings, and nothing to encode again when a batch goes
//! out (or goes out again after a reconnection).

use std::{collections::VecDeque, marker::PhantomData};

use xdt_wire::{
    FrameError, MAX_FRAME,
    frame::{EncodedItems, encode_item},
};

/// A list of `T`, oldest first, held as the items' postcard encodings one after the other (as a
/// message's list carries them) with each one's length, so that the oldest can be dropped and
/// a list cut into frames without decoding anything.
pub struct Encoded<T> {
    bytes: Vec<u8>,
    /// Each item's length in `bytes`, oldest first.
    lens: VecDeque<u32>,
    /// Bytes at the start of `bytes` of items already gone; moved out once they are most of it,
    /// so dropping the oldest items one by one costs no shift of the rest each time.
    dead: usize,
    item: PhantomData<fn(&T)>,
}

impl<T> Default for Encoded<T> {
    fn default() -> Self {
        Self {
            bytes: Vec::new(),
            lens: VecDeque::new(),
            dead: 0,
            item: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Encoded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("items", &self.lens.len())
            .field("bytes", &self.byte_len())
            .finish_non_exhaustive()
    }
}

impl<T: serde::Serialize> Encoded<T> {
    /// Appends `item`. One that encodes in more than a frame can hold is refused (`TooLarge`),
    /// and so is one that does not encode: nothing is added then.
    pub fn push(&mut self, item: &T) -> Result<(), FrameError> {
        let before = self.bytes.len();
        let len = encode_item(item, &mut self.bytes)
            .and_then(|len| match u32::try_from(len) {
                Ok(small) if len <= MAX_FRAME => Ok(small),
                _ => Err(FrameError::TooLarge { len }),
            })
            .inspect_err(|_| self.bytes.truncate(before))?;
        self.lens.push_back(len);
        Ok(())
    }
}

impl<T> Encoded<T> {
    /// Items held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Bytes of the items' encodings.
    #[must_use]
    pub fn byte_len(&self) -> usize {
        self.bytes.len() - self.dead
    }

    /// The items as a message's list carries them.
    #[must_use]
    pub fn items(&self) -> EncodedItems<'_> {
        EncodedItems {
            count: self.lens.len(),
            bytes: &self.bytes[self.dead..],
        }
    }

    /// The length of the oldest item's encoding.
    #[must_use]
    pub fn first_len(&self) -> Option<usize> {
        self.lens.front().map(|&len| len as usize)
    }

    /// Moves every item of `other` after these; `other` is left empty (its room kept).
    pub fn append(&mut self, other: &mut Self) {
        if self.is_empty() {
            // The common case (a batch takes all that is pending): no copy.
            std::mem::swap(self, other);
            other.clear();
            return;
        }
        self.bytes.extend_from_slice(&other.bytes[other.dead..]);
        self.lens.append(&mut other.lens);
        other.clear();
    }

    /// Moves the oldest item to the end of `to`; `false` if there is none.
    pub fn move_first(&mut self, to: &mut Self) -> bool {
        let Some(len) = self.first_len() else {
            return false;
        };
        to.bytes
            .extend_from_slice(&self.bytes[self.dead..self.dead + len]);
        to.lens.push_back(self.lens[0]);
        self.drop_oldest(1);
        true
    }

    /// Drops the `n` oldest items (all if there are fewer); returns how many went.
    pub fn drop_oldest(&mut self, n: usize) -> usize {
        let n = n.min(self.lens.len());
        let bytes: usize = self.lens.drain(..n).map(|len| len as usize).sum();
        self.dead += bytes;
        if self.lens.is_empty() {
            self.clear();
        } else if self.dead > self.bytes.len() / 2 {
            self.bytes.drain(..self.dead);
            self.dead = 0;
        }
        n
    }

    /// Drops every item; the room stays for the next ones.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.lens.clear();
        self.dead = 0;
    }

    /// Room for `bytes` more bytes of items.
    pub fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(list: &Encoded<u64>) -> Vec<u64> {
        let mut bytes = list.items().bytes;
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (n, rest) = postcard::take_from_bytes(bytes).expect("decode");
            out.push(n);
            bytes = rest;
        }
        assert_eq!(out.len(), list.len(), "count and bytes agree");
        out
    }

    /// Items of different lengths (varints of 1 to 10 bytes) dropped oldest first one at a
    /// time, through the compaction of their bytes, moved, appended: what is left always reads
    /// back as the items in order.
    #[test]
    fn the_oldest_go_first_and_the_rest_read_back_in_order() {
        let values: Vec<u64> = (0..200).map(|i| i * i * i * i * i * i * i * i).collect();
        let mut list = Encoded::default();
        for v in &values {
            list.push(v).expect("encode");
        }
        assert_eq!(numbers(&list), values);
        for dropped in 1..=150 {
            assert_eq!(list.drop_oldest(1), 1);
            assert_eq!(numbers(&list), values[dropped..]);
        }
        let mut moved = Encoded::default();
        for _ in 0..10 {
            assert!(list.move_first(&mut moved));
        }
        assert_eq!(numbers(&moved), values[150..160]);
        moved.append(&mut list);
        assert!(list.is_empty());
        assert_eq!(numbers(&moved), values[150..]);
        assert_eq!(moved.drop_oldest(1000), 50, "no more than there are");
        assert!(!moved.move_first(&mut list));
        assert_eq!((moved.len(), moved.byte_len()), (0, 0));
    }

    /// An item over the frame maximum is refused and leaves the list as it was.
    #[test]
    fn an_item_larger_than_a_frame_is_refused() {
        let mut list = Encoded::default();
        list.push(&vec![1u8; 10]).expect("small");
        let before = list.byte_len();
        assert!(matches!(
            list.push(&vec![1u8; MAX_FRAME]),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!((list.len(), list.byte_len()), (1, before));
    }
}

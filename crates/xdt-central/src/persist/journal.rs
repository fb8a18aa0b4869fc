//! The batch journal that makes an `Ack` mean "durably stored": every new batch is appended to
//! `journal.N` in `--state-dir` and synced before it is acknowledged. Appends that arrive while
//! a sync runs are written and synced together by the next one (group commit), so the cost is
//! one `fdatasync` per burst, not per batch.
//!
//! `state.json` (see [`super`]) is a snapshot; the journal holds what came since. A
//! snapshot is taken under the state lock together with [`Journal::rotate`], so every record of
//! the older segments is in the snapshot: once the snapshot is durable they are pruned. At start
//! the snapshot is loaded and every remaining segment is replayed through the same
//! `State::apply` that ingest uses; batches the snapshot already holds are dropped by the
//! (agent, instance, sequence) dedup, so a replay is idempotent.
//!
//! A record is `len (u32 BE) | crc32 (u32 BE) | postcard(Record)`, the batch inside it being
//! the frame payload exactly as the agent sent it. A torn record at the end of a segment (a
//! crash while writing it) was never synced, hence never acknowledged: it is ignored.
//!
//! One job in one file, a little over 500 lines with its tests: the writer thread and the
//! replay at start share the record format and the segment numbering, and are read together.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use log::{error, info, warn};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    counters::Counters,
    error::{Error, Result},
    state::State,
};

const PREFIX: &str = "journal.";
/// After a failed write or sync, wait this long before trying again in a fresh segment.
const RETRY: Duration = Duration::from_millis(200);

/// One journal entry.
#[derive(Debug, Serialize, Deserialize)]
enum Entry<'a> {
    #[serde(borrow)]
    Batch(Record<'a>),
    /// The agent was removed from the table (evicted or expired): a replay must not bring
    /// it back from its older records.
    Removed(&'a str),
}

/// The agent's identity as its `Hello` gave it, and the batch's frame payload.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record<'a> {
    pub agent_id: &'a str,
    pub hostname: &'a str,
    pub interface: &'a str,
    pub probe_version: &'a str,
    pub instance: u64,
    /// When central received it (unix seconds).
    pub received_unix: f64,
    /// The postcard `Message::Batch` as it came off the wire.
    #[serde(borrow)]
    pub payload: &'a [u8],
}

enum Command {
    /// Bytes of one record, and its ticket.
    Append(Vec<u8>, u64),
    /// Start segment `n`: what follows is not in the snapshot being taken.
    Rotate(u64),
    /// Remove the segments below `n`: a durable snapshot holds them.
    Prune(u64),
}

/// The writer's handle: appends hand out tickets, [`Journal::durable`] says how far the
/// records are synced.
#[derive(Debug)]
pub(crate) struct Journal {
    sender: Mutex<Option<mpsc::Sender<Command>>>,
    /// The ticket of the newest record handed to the writer.
    appended: AtomicU64,
    /// The segment the next appends go to.
    segment: AtomicU64,
    durable: watch::Receiver<u64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The journal is being closed (central stops): no more Acks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed;

impl Journal {
    /// Replays the segments in `dir` into `state`, then opens a new segment after them.
    pub(crate) fn open(dir: &Path, state: &mut State, counters: Arc<Counters>) -> Result<Self> {
        let segments = segments(dir).map_err(|source| Error::LoadState {
            path: dir.to_owned(),
            source: source.into(),
        })?;
        let mut replayed = 0u64;
        for (_, path) in &segments {
            replayed += replay(path, state)?;
        }
        if !segments.is_empty() {
            info!(segments = segments.len(), batches = replayed; "journal replayed");
        }
        let next = segments.last().map_or(1, |(n, _)| n + 1);
        let file = create(dir, next).map_err(|source| Error::SaveState {
            path: segment_path(dir, next),
            source,
        })?;
        let (sender, receiver) = mpsc::channel();
        let (durable_tx, durable) = watch::channel(0);
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            segment: next,
            durable: durable_tx,
            counters,
        };
        let writer = std::thread::Builder::new()
            .name("xdt-journal".into())
            .spawn(move || writer.run(&receiver))
            .map_err(|source| Error::Thread {
                name: "journal",
                source,
            })?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            appended: AtomicU64::new(0),
            segment: AtomicU64::new(next),
            durable,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Hands a record to the writer and returns its ticket. Call it under the state's write
    /// lock, right after applying the batch, so records are in the order of the state.
    pub(crate) fn append(&self, record: &Record<'_>) -> u64 {
        self.append_entry(&Entry::Batch(Record { ..*record }))
    }

    /// Records that the agents were removed from the table (under the state's write lock).
    pub(crate) fn removed(&self, agent_ids: &[String]) {
        for agent_id in agent_ids {
            self.append_entry(&Entry::Removed(agent_id));
        }
    }

    fn append_entry(&self, entry: &Entry<'_>) -> u64 {
        let mut bytes = vec![0; 8];
        if postcard::to_io(entry, &mut bytes).is_err() {
            // Serialising into a Vec cannot fail; the newest ticket keeps the order anyway.
            return self.appended.load(Ordering::SeqCst);
        }
        let len = (bytes.len() - 8) as u32;
        let crc = crc32fast::hash(&bytes[8..]);
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        bytes[4..8].copy_from_slice(&crc.to_be_bytes());
        let ticket = self.appended.fetch_add(1, Ordering::SeqCst) + 1;
        self.send(Command::Append(bytes, ticket));
        ticket
    }

    /// The ticket of the newest record: a duplicate batch is acknowledged once the record that
    /// applied it first is durable, which this covers.
    pub(crate) fn newest(&self) -> u64 {
        self.appended.load(Ordering::SeqCst)
    }

    /// Waits until the record of `ticket` (and every one before) is synced.
    pub(crate) async fn durable(&self, ticket: u64) -> Result<(), Closed> {
        let mut durable = self.durable.clone();
        match durable.wait_for(|d| *d >= ticket).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Closed),
        }
    }

    /// Starts a new segment for the records that follow; returns its number. Call it under the
    /// state's lock, with the snapshot taken under the same lock.
    pub(crate) fn rotate(&self) -> u64 {
        let next = self.segment.fetch_add(1, Ordering::SeqCst) + 1;
        self.send(Command::Rotate(next));
        next
    }

    /// Removes the segments below `segment` (a durable snapshot holds their records).
    pub(crate) fn prune(&self, segment: u64) {
        self.send(Command::Prune(segment));
    }

    fn send(&self, command: Command) {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = sender.as_ref() {
            // The writer only ends when the sender is dropped.
            let _ = sender.send(command);
        }
    }

    /// Writes what is queued and stops the writer.
    pub(crate) fn close(&self) {
        drop(
            self.sender
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            error!("the journal writer panicked");
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    segment: u64,
    durable: watch::Sender<u64>,
    counters: Arc<Counters>,
}

impl Writer {
    fn run(mut self, receiver: &mpsc::Receiver<Command>) {
        let mut pending = Vec::new();
        while let Ok(first) = receiver.recv() {
            let mut newest = None;
            let mut commands = vec![first];
            commands.extend(receiver.try_iter());
            for command in commands {
                match command {
                    Command::Append(bytes, ticket) => {
                        pending.extend_from_slice(&bytes);
                        newest = Some(ticket);
                    }
                    Command::Rotate(segment) => {
                        // What came before goes into the old segment.
                        self.write_synced(&mut pending);
                        self.switch_to(segment);
                    }
                    Command::Prune(below) => self.prune(below),
                }
            }
            self.write_synced(&mut pending);
            if let Some(ticket) = newest {
                self.durable.send_replace(ticket);
            }
        }
        self.write_synced(&mut pending);
    }

    /// Writes `pending` and syncs it, retrying in a fresh segment until it works: nothing is
    /// acknowledged meanwhile.
    fn write_synced(&mut self, pending: &mut Vec<u8>) {
        if pending.is_empty() {
            return;
        }
        loop {
            match self
                .file
                .write_all(pending)
                .and_then(|()| self.file.sync_data())
            {
                Ok(()) => break,
                Err(e) => {
                    let failures = self
                        .counters
                        .journal_failures
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    error!(
                        segment = self.segment, failures, cause:% = e;
                        "writing the journal failed; retrying in a new segment, Acks wait"
                    );
                    std::thread::sleep(RETRY);
                    // After a failed sync the file's state is unknown: write everything
                    // pending again into a new segment (a duplicate record is harmless).
                    self.switch_to(self.segment + 1);
                }
            }
        }
        pending.clear();
    }

    fn switch_to(&mut self, segment: u64) {
        loop {
            match create(&self.dir, segment.max(self.segment + 1)) {
                Ok(file) => {
                    self.file = file;
                    self.segment = segment.max(self.segment + 1);
                    return;
                }
                Err(e) => {
                    Counters::add(&self.counters.journal_failures);
                    error!(segment, cause:% = e; "cannot create a journal segment; retrying");
                    std::thread::sleep(RETRY);
                }
            }
        }
    }

    fn prune(&self, below: u64) {
        let segments = match segments(&self.dir) {
            Ok(segments) => segments,
            Err(e) => {
                warn!(cause:% = e; "cannot list the journal segments to prune them");
                return;
            }
        };
        for (n, path) in segments {
            if n < below.min(self.segment)
                && let Err(e) = fs::remove_file(&path)
            {
                warn!(path:% = path.display(), cause:% = e; "cannot remove a journal segment");
            }
        }
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{n:010}"))
}

/// Creates segment `n` and makes its name durable.
fn create(dir: &Path, n: u64) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, n))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            segments.push((n, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(n, _)| *n);
    Ok(segments)
}

/// Applies the records of one segment; returns how many were read.
fn replay(path: &Path, state: &mut State) -> Result<u64> {
    let bytes = fs::read(path).map_err(|source| Error::LoadState {
        path: path.to_owned(),
        source: source.into(),
    })?;
    let mut rest = bytes.as_slice();
    let mut count = 0;
    while !rest.is_empty() {
        let Some(record) = next_record(&mut rest) else {
            warn!(
                path:% = path.display(), ignored_bytes = rest.len();
                "the journal ends in a torn record (never acknowledged): ignored"
            );
            break;
        };
        match postcard::from_bytes::<Entry<'_>>(record) {
            Ok(Entry::Batch(record)) => match xdt_wire::frame::decode(record.payload)
                .ok()
                .and_then(|message| message.into_batch().ok())
            {
                Some((batch, flows)) => {
                    state.register(
                        record.agent_id,
                        record.hostname,
                        record.interface,
                        record.probe_version,
                        record.instance,
                    );
                    state.apply_with_flows(
                        record.agent_id,
                        record.instance,
                        batch,
                        flows,
                        record.received_unix,
                    );
                    count += 1;
                }
                None => {
                    warn!(path:% = path.display(); "a journal record holds no batch: skipped");
                }
            },
            Ok(Entry::Removed(agent_id)) => state.forget(agent_id),
            Err(e) => {
                warn!(path:% = path.display(), cause:% = e; "an unreadable journal record: skipped");
            }
        }
    }
    Ok(count)
}

/// The body of the next record whose checksum matches, advancing `rest`.
fn next_record<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let header = rest.get(..8)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let body = rest.get(8..8 + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    *rest = &rest[8 + len..];
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdt_wire::{AgentStats, Batch, Message};

    fn payload(sequence: u64) -> Vec<u8> {
        let mut frame = Vec::new();
        xdt_wire::frame::encode(
            &Message::Batch(Batch {
                sequence,
                taken_at_unix_ns: sequence,
                counters: vec![("total_packets".into(), sequence * 10)],
                labels: vec![],
                events: vec![],
                agent: AgentStats::default(),
            }),
            &mut frame,
        )
        .expect("encode");
        frame.split_off(xdt_wire::frame::HEADER_LEN)
    }

    fn record<'a>(agent_id: &'a str, payload: &'a [u8]) -> Record<'a> {
        Record {
            agent_id,
            hostname: "h",
            interface: "eth0",
            probe_version: "0",
            instance: 7,
            received_unix: 1.0,
            payload,
        }
    }

    #[tokio::test]
    async fn replays_synced_records_and_ignores_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("xdt-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut state = State::new(10, 4);
        let journal = Journal::open(&dir, &mut state, Arc::default()).expect("open");
        let (one, two) = (payload(1), payload(2));
        journal.append(&record("a", &one));
        journal.removed(&["gone".to_owned()]);
        let ticket = journal.append(&record("a", &two));
        journal.durable(ticket).await.expect("synced");
        journal.close();
        // A crash in the middle of the next record: its header and half its body.
        let (_, last) = segments(&dir).expect("segments").pop().expect("a segment");
        let mut torn = Vec::new();
        postcard::to_io(&Entry::Batch(record("a", &payload(3))), &mut torn).expect("encode");
        let mut bytes = fs::read(&last).expect("read");
        bytes.extend_from_slice(&(torn.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&torn).to_be_bytes());
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        fs::write(&last, bytes).expect("write");

        let mut restored = State::new(10, 4);
        let gone = xdt_wire::Hello {
            agent_id: "gone".into(),
            hostname: "h".into(),
            interface: "eth0".into(),
            probe_version: "0".into(),
            instance: 1,
            token: "t".into(),
        };
        restored.connect(&gone, 0.0).expect("connect");
        restored.disconnect("gone", 0.0);
        let journal = Journal::open(&dir, &mut restored, Arc::default()).expect("replay");
        let a = restored.agent("a").expect("replayed");
        assert_eq!(
            (a.last_sequence(7), a.counter("total_packets")),
            (2, Some(20))
        );
        assert!(restored.agent("gone").is_none(), "the removal was replayed");
        // Replaying again changes nothing (the dedup drops what is held).
        journal.close();
        let journal = Journal::open(&dir, &mut restored, Arc::default()).expect("replay");
        assert_eq!(restored.agent("a").expect("a").last_sequence(7), 2);
        journal.close();
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}

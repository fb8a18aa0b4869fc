//! AF_XDP sockets with xdpilone: one RX socket per receive queue of the monitored interface and
//! one TX socket for re-injection, each with its own UMEM.
//!
//! Frame ownership is plain bookkeeping: a frame is either in the kernel's hands (fill ring,
//! RX ring, TX ring, completion ring) or on the socket's `free` list. The RX path hands every
//! frame straight back after reading it (the bytes are copied into a TX frame), so a slow or
//! failed TX never starves reception.
//!
//! [`socket`] sets up a socket and its UMEM for either; [`rx`] and [`tx`] drive them.

mod rx;
mod socket;
mod tx;

pub use self::{
    rx::{RxFrame, RxQueue},
    socket::{BindMode, FRAME_SIZE, XskError},
    tx::TxPort,
};

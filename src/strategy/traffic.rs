//! What a strategy says it sends: the kinds of communication, and one kind of message of a rank
//! with its peers, bytes and calls (prefill's and decode's tables alike).

/// The kinds of communication a strategy issues, one per `Communicator` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    RingStep,
    AllReduce,
    AllGather,
    AllToAll,
    ReduceScatter,
    PipelineSend,
    PipelineRecv,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::RingStep => "ring step",
            Op::AllReduce => "all-reduce",
            Op::AllGather => "all-gather",
            Op::AllToAll => "all-to-all",
            Op::ReduceScatter => "reduce-scatter",
            Op::PipelineSend => "pipeline send",
            Op::PipelineRecv => "pipeline receive",
        }
    }
}

/// One kind of message a rank exchanges: what it is, with whom (world ranks: the one peer, or the
/// whole group), the buffer handed to each call, the bytes each call sends and receives as
/// `comm::metered` counts them, and how many calls an iteration makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub op: Op,
    pub what: &'static str,
    pub peers: Vec<usize>,
    pub buffer_bytes: u64,
    pub sent: u64,
    pub received: u64,
    pub calls: u64,
    /// Whether it runs under compute (the ring's steps); everything else waits for it.
    pub overlapped: bool,
}

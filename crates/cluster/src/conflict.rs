//! A resend or a reuse? What a front door answers when JetStream says a client id is a
//! duplicate: the PubAck names the stored message's sequence, and the event behind it decides.
//!
//! Lesson: JetStream deduplicates by `Nats-Msg-Id` alone, so "duplicate" means "this id was
//! stored", not "this event was stored". Standalone answers the same id with another user or
//! amount 422 `id_conflict`; a node can too, within JetStream's duplicate window, because the
//! sequence of the original is known:
//!
//! 1. The original is still in the stream (not applied and purged yet): read it by sequence and
//!    compare user and amount.
//! 2. It was purged: its owner applied it and kept the id with a digest of its event (see
//!    `state`). Ask the owner of the *new* event's partition ([`IdLookup`]): a digest decides;
//!    an owner that does not know the id but has applied past the original's sequence and
//!    forgotten no id after it proves the original was another partition's, so another
//!    user's. An owner that does not know it and has not applied that far proves the same:
//!    a purged event was applied by its own partition's owner, and snapshots (which a new
//!    owner starts from) cover every purge.
//!    A resent batch message (up to 1,000 ids, all of one partition) asks its owner once with
//!    every id (`reads`: the `ids` request), not once per id.
//! 3. The owner forgot ids up to the original (`forgotten_through`), or the original was
//!    written before digests were kept: nothing tells; answered a duplicate, as before.
//!
//! And when JetStream stores a batch message *new* (another composition than any before), its
//! events may still repeat client ids an earlier message carried; the owner skips those. The
//! front door asks the owner once per message, after the owner applied it, what it keeps of
//! the message's ids ([`judge_stored_message`]): an id kept from an earlier message was a
//! repeat (`duplicate`, or a conflict by its digest), so a mixed resend is answered per event
//! as standalone answers it, and the answer is the owner's own decision in stream order.
//!
//! Invariant: a refusal here is never a guess. A partition without an owner, or an owner or
//! stream that does not answer, is `Rejected::Unreachable` (503; the resend is safe), never
//! `duplicate` nor `id_conflict` by default.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use floodgate_core::dedup::ConflictField;
use floodgate_core::{Event, Rejected};

use crate::partition::{Partition, partition_of};
use crate::reads::ReadError;
use crate::state::{EventDigest, IdLookup, KeptId};
use crate::view::MemberView;
use crate::wire::{Payload, decode_event, decode_payload};

/// Pause before asking again for the owner of a partition that has none right now.
const OWNER_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a duplicate PubAck turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same user and amount (or nothing tells them apart): a resend.
    Resend,
    /// The id was stored with another user or amount.
    Conflict(ConflictField),
}

/// Decides a duplicate of `event` (client id `id`) whose original JetStream stored at
/// `sequence`: from the stored message while it is in the stream, else from the owner of the
/// event's partition.
pub async fn judge_duplicate(
    view: &MemberView,
    event: &Event,
    id: &str,
    sequence: u64,
) -> Result<Verdict, Rejected> {
    match view.layout.stream.get_raw_message(sequence).await {
        Ok(stored) => {
            let same_id = stored
                .headers
                .get("Nats-Msg-Id")
                .is_some_and(|stored_id| stored_id.as_str() == id);
            if same_id && let Ok(original) = decode_event(&stored.payload) {
                return Ok(compare_events(&original, event));
            }
            // Not a single event of ours under this id: let the owner decide.
        }
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
        Err(error) => {
            tracing::warn!(%error, id, sequence, "duplicate not checked: stream unreachable");
            return Err(Rejected::Unreachable);
        }
    }
    let partition = partition_of(&event.user, view.config.partitions);
    match view.lookup_id(partition, id).await {
        Ok(lookup) => Ok(judge_lookup(event, sequence, lookup)),
        Err(error @ (ReadError::Moving(_) | ReadError::Unreachable { .. })) => {
            tracing::debug!(%error, id, "duplicate not checked: owner not answering");
            Err(Rejected::Unreachable)
        }
    }
}

/// Decides a duplicate batch message (`message_id`, carrying `events`; JetStream's original
/// at `sequence`) event by event: from the stored message while it is in the stream (the same
/// message id means the same client ids in the same order; user and amount are compared),
/// else from the owner of each event's partition, as [`judge_duplicate`] does, asked once for
/// all of its ids (`verdicts_from_owners`). An event without a client id is only ever in a
/// repeated message through the node's own retry: a resend.
pub async fn judge_batch_duplicate(
    view: &MemberView,
    events: &[&Event],
    message_id: &str,
    sequence: u64,
) -> Result<Vec<Verdict>, Rejected> {
    match view.layout.stream.get_raw_message(sequence).await {
        Ok(stored) => {
            let same_id = stored
                .headers
                .get("Nats-Msg-Id")
                .is_some_and(|stored_id| stored_id.as_str() == message_id);
            if same_id
                && let Ok(Payload::Batch(originals)) = decode_payload(&stored.payload)
                && originals.len() == events.len()
            {
                let pairs = originals.iter().zip(events);
                return Ok(pairs
                    .map(|(original, event)| compare_events(original, event))
                    .collect());
            }
        }
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
        Err(error) => {
            tracing::warn!(%error, message_id, sequence, "duplicate not checked: stream unreachable");
            return Err(Rejected::Unreachable);
        }
    }
    verdicts_from_owners(view, events, sequence)
        .await
        .map_err(|error| {
            tracing::debug!(%error, message_id, "duplicate not checked: owner not answering");
            Rejected::Unreachable
        })
}

/// Each event's verdict from what its partition's owner knows of its id: one lookup per
/// partition with all of that partition's ids (a batch message is one partition's, so one
/// request), the partitions asked at once. An event without a client id is a resend.
async fn verdicts_from_owners(
    view: &MemberView,
    events: &[&Event],
    sequence: u64,
) -> Result<Vec<Verdict>, ReadError> {
    let mut by_partition: BTreeMap<Partition, Vec<(usize, &str)>> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        if let Some(id) = &event.id {
            let partition = partition_of(&event.user, view.config.partitions);
            by_partition
                .entry(partition)
                .or_default()
                .push((index, id.as_str()));
        }
    }
    let lookups = by_partition.iter().map(|(&partition, asked)| async move {
        let ids: Vec<&str> = asked.iter().map(|&(_, id)| id).collect();
        view.lookup_ids(partition, &ids).await
    });
    let answers = futures_util::future::join_all(lookups).await;
    let mut verdicts = vec![Verdict::Resend; events.len()];
    for (asked, answer) in by_partition.values().zip(answers) {
        for (&(index, _), lookup) in asked.iter().zip(answer?) {
            verdicts[index] = judge_lookup(events[index], sequence, lookup);
        }
    }
    Ok(verdicts)
}

/// The verdict when the original event is at hand.
pub fn compare_events(original: &Event, event: &Event) -> Verdict {
    if original.user != event.user {
        Verdict::Conflict(ConflictField::User)
    } else if original.amount != event.amount {
        Verdict::Conflict(ConflictField::Amount)
    } else {
        Verdict::Resend
    }
}

/// The verdict from what the owner of `event`'s partition knows of its id, the original
/// having been stored (and purged) at `sequence`.
pub fn judge_lookup(event: &Event, sequence: u64, lookup: IdLookup) -> Verdict {
    match lookup {
        IdLookup::Known(Some(digest)) => digest_verdict(digest, event),
        IdLookup::Known(None) => Verdict::Resend,
        IdLookup::Unknown {
            forgotten_through, ..
        } if sequence <= forgotten_through => Verdict::Resend,
        // Not this partition's client-id event (it would be remembered), or not applied here
        // though purged (only its own partition's owner purges it): another partition's,
        // hence another user's.
        IdLookup::Unknown { .. } => Verdict::Conflict(ConflictField::User),
    }
}

/// Whether `event`, carried by a message JetStream stored *new* at `sequence` (another batch
/// composition than any before), was applied from it (`None`) or skipped by its owner as a
/// repeat of an earlier message (a verdict), from what the owner keeps of its id once it has
/// applied that sequence. An id kept with this sequence, or a later one (applied here, then
/// forgotten and applied again), was applied here; one kept with an earlier sequence was
/// skipped: a resend, or a conflict when its digest differs. An id not kept was applied here
/// or forgotten since (nothing tells: answered applied, as before this check).
pub fn judge_stored(event: &Event, sequence: u64, kept: Option<KeptId>) -> Option<Verdict> {
    let kept = kept.filter(|kept| kept.sequence < sequence)?;
    Some(match kept.digest {
        Some(digest) => digest_verdict(digest, event),
        None => Verdict::Resend,
    })
}

/// [`judge_stored`] for each event of a batch message stored new at `sequence` on
/// `partition`: one question to the partition's owner for all of its client ids, once it
/// has applied that sequence. An event without a client id was applied (`None`). A partition
/// without an owner is asked again until `deadline`; no answer by then is
/// `Rejected::Unreachable` (the message is stored; a resend with the same ids is safe).
pub async fn judge_stored_message(
    view: &MemberView,
    events: &[&Event],
    partition: Partition,
    sequence: u64,
    deadline: Instant,
) -> Result<Vec<Option<Verdict>>, Rejected> {
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|event| event.id.as_ref().map(floodgate_core::EventId::as_str))
        .collect();
    if ids.is_empty() {
        return Ok(vec![None; events.len()]);
    }
    let kept = loop {
        match view.kept_ids(partition, sequence, &ids).await {
            Ok(kept) if kept.len() == ids.len() => break kept,
            Ok(kept) => {
                tracing::warn!(
                    partition,
                    sequence,
                    asked = ids.len(),
                    answered = kept.len(),
                    "stored message not judged: the owner answered another count"
                );
                return Err(Rejected::Unreachable);
            }
            Err(ReadError::Moving(_)) if Instant::now() + OWNER_RETRY_PAUSE < deadline => {
                tokio::time::sleep(OWNER_RETRY_PAUSE).await;
            }
            Err(error) => {
                tracing::debug!(%error, partition, sequence, "stored message not judged: owner not answering");
                return Err(Rejected::Unreachable);
            }
        }
    };
    let mut kept = kept.into_iter();
    Ok(events
        .iter()
        .map(|event| {
            event.id.as_ref()?;
            judge_stored(event, sequence, kept.next().flatten())
        })
        .collect())
}

fn digest_verdict(digest: EventDigest, event: &Event) -> Verdict {
    digest
        .conflict_with(event)
        .map_or(Verdict::Resend, Verdict::Conflict)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every branch of the decision from an owner's answer: a digest decides by user
    // then amount; a bare id is a resend; an unknown id is another user's unless the owner
    // may have forgotten it.
    #[test]
    fn an_owner_answer_decides_or_admits_it_cannot() {
        let event = Event::new("a", 5);
        let known =
            |user: &str, amount| IdLookup::Known(Some(EventDigest::of(&Event::new(user, amount))));
        assert_eq!(judge_lookup(&event, 7, known("a", 5)), Verdict::Resend);
        assert_eq!(
            judge_lookup(&event, 7, known("a", 6)),
            Verdict::Conflict(ConflictField::Amount)
        );
        assert_eq!(
            judge_lookup(&event, 7, known("b", 6)),
            Verdict::Conflict(ConflictField::User)
        );
        assert_eq!(
            judge_lookup(&event, 7, IdLookup::Known(None)),
            Verdict::Resend
        );
        let unknown = |applied_sequence, forgotten_through| IdLookup::Unknown {
            applied_sequence,
            forgotten_through,
        };
        assert_eq!(judge_lookup(&event, 7, unknown(9, 7)), Verdict::Resend);
        assert_eq!(
            judge_lookup(&event, 7, unknown(9, 6)),
            Verdict::Conflict(ConflictField::User)
        );
        assert_eq!(
            judge_lookup(&event, 7, unknown(3, 0)),
            Verdict::Conflict(ConflictField::User)
        );
        assert_eq!(
            compare_events(&Event::new("a", 5), &Event::new("a", 6)),
            Verdict::Conflict(ConflictField::Amount)
        );
    }

    // Proves the judgment of an event stored new at sequence 7: an id kept from an earlier
    // message was skipped (a resend, or a conflict by its digest), one kept from this message
    // or a later one, or not kept, was applied here.
    #[test]
    fn a_stored_event_was_applied_unless_its_id_came_earlier() {
        let event = Event::new("a", 5);
        let kept = |sequence, user: &str, amount| {
            Some(KeptId {
                sequence,
                digest: Some(EventDigest::of(&Event::new(user, amount))),
            })
        };
        assert_eq!(
            judge_stored(&event, 7, kept(3, "a", 5)),
            Some(Verdict::Resend)
        );
        assert_eq!(
            judge_stored(&event, 7, kept(3, "a", 6)),
            Some(Verdict::Conflict(ConflictField::Amount))
        );
        assert_eq!(
            judge_stored(&event, 7, kept(3, "b", 5)),
            Some(Verdict::Conflict(ConflictField::User))
        );
        let bare = Some(KeptId {
            sequence: 0,
            digest: None,
        });
        assert_eq!(judge_stored(&event, 7, bare), Some(Verdict::Resend));
        assert_eq!(judge_stored(&event, 7, kept(7, "a", 5)), None);
        assert_eq!(judge_stored(&event, 7, kept(9, "a", 5)), None);
        assert_eq!(judge_stored(&event, 7, None), None);
    }
}

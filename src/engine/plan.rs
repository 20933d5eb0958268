//! The scheduler's decision for one step, as plain data: which running sequences feed how many
//! rows, and which are preempted to make room. A pure function of what each sequence wants and
//! what the pool has, so it is tested without a model or a pool.

/// What the planner knows of one running sequence (in order of admission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Rows it would feed next (see `Sequence::next_rows`).
    pub rows: usize,
    /// A prompt chunk (counted against the prompt-token budget) rather than decode rows.
    pub prefill: bool,
    /// Blocks it must be given to hold those rows.
    pub grow: usize,
    /// Blocks preempting it would free (those no other sequence shares).
    pub releases: usize,
}

/// One step's plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Sequences that run, by index, in row order: decode rows first, then prompt chunks.
    pub step: Vec<usize>,
    /// Sequences preempted first, by index: always the most recently admitted ones, so the indices
    /// in `step` stay valid once they are removed.
    pub preempt: Vec<usize>,
}

/// Every sequence with its prompt in the cache feeds its decode rows, then prompt chunks go,
/// oldest first, while they fit in `budget` prompt tokens. Each takes the blocks it grows into
/// from the `free` ones; where too few are left, the most recently admitted sequences are
/// preempted until it fits, or until it is the one preempted. The oldest sequence fits alone
/// (admission refuses what could not), so it is never preempted and never starves.
pub(crate) fn plan_step(candidates: &[Candidate], mut free: usize, budget: usize) -> Plan {
    let (decoding, prefilling): (Vec<usize>, Vec<usize>) =
        (0..candidates.len()).partition(|&i| !candidates[i].prefill);
    let mut plan = Plan::default();
    // Sequences not preempted are `0..alive`.
    let mut alive = candidates.len();
    let mut budget = budget;
    for i in decoding.into_iter().chain(prefilling) {
        if i >= alive {
            continue;
        }
        let c = candidates[i];
        if c.prefill && c.rows > budget {
            break;
        }
        while c.grow > free && alive > i {
            alive -= 1;
            plan.preempt.push(alive);
            free += candidates[alive].releases;
            // A victim already in the step gives back what it was to take.
            if let Some(at) = plan.step.iter().position(|&s| s == alive) {
                plan.step.remove(at);
                free += candidates[alive].grow;
                if candidates[alive].prefill {
                    budget += candidates[alive].rows;
                }
            }
        }
        if i >= alive {
            continue;
        }
        free -= c.grow;
        plan.step.push(i);
        if c.prefill {
            budget -= c.rows;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(grow: usize, releases: usize) -> Candidate {
        Candidate {
            rows: 1,
            prefill: false,
            grow,
            releases,
        }
    }

    fn prefill(rows: usize, grow: usize, releases: usize) -> Candidate {
        Candidate {
            rows,
            prefill: true,
            grow,
            releases,
        }
    }

    #[test]
    fn decode_rows_go_first_then_prompt_chunks_oldest_first_within_the_budget() {
        let candidates = [
            prefill(300, 0, 20),
            decode(0, 5),
            prefill(300, 0, 20),
            decode(0, 5),
        ];
        let plan = plan_step(&candidates, 10, 512);
        assert_eq!(
            plan.step,
            vec![1, 3, 0],
            "the second chunk waits for the next step"
        );
        assert!(plan.preempt.is_empty());
    }

    #[test]
    fn growth_takes_free_blocks_without_preempting_while_they_last() {
        let candidates = [decode(1, 4), decode(1, 4), decode(1, 4)];
        assert_eq!(plan_step(&candidates, 3, 512).step, vec![0, 1, 2]);
    }

    #[test]
    fn the_most_recently_admitted_are_preempted_first() {
        // Three grow by one block, one is free: the newest is preempted (freeing 4), and the
        // others both fit.
        let candidates = [decode(1, 4), decode(1, 4), decode(1, 4)];
        let plan = plan_step(&candidates, 1, 512);
        assert_eq!(plan.preempt, vec![2]);
        assert_eq!(plan.step, vec![0, 1]);
    }

    #[test]
    fn a_preempted_sequence_already_planned_gives_its_blocks_back() {
        // The decode row of 2 is planned first; the prompt chunk of 1 then needs 6 blocks.
        let candidates = [decode(0, 3), prefill(64, 6, 2), decode(1, 3)];
        let plan = plan_step(&candidates, 3, 512);
        assert_eq!(plan.preempt, vec![2]);
        assert_eq!(plan.step, vec![0, 1]);
    }

    #[test]
    fn a_sequence_that_cannot_fit_beside_older_ones_preempts_itself() {
        // Nothing newer to preempt: the newest gives up its own blocks.
        let candidates = [decode(1, 10), decode(5, 2)];
        let plan = plan_step(&candidates, 1, 512);
        assert_eq!(plan.preempt, vec![1]);
        assert_eq!(plan.step, vec![0]);
    }

    #[test]
    fn the_oldest_is_never_preempted_and_always_runs() {
        // However short the pool, the newer ones go and the oldest takes their blocks.
        let candidates = [decode(6, 1), decode(0, 2), decode(0, 2), decode(0, 2)];
        let plan = plan_step(&candidates, 0, 512);
        assert_eq!(plan.preempt, vec![3, 2, 1]);
        assert_eq!(plan.step, vec![0]);
    }
}

//! The process-wide plugin memory budget (`plugins.memory_budget_mb`): every plugin
//! instance's linear memories and tables, running or kept for reuse, are charged to one
//! account, so that many campaigns with generous `memory_mb` and `reuse` cannot together take
//! the host's memory.
//!
//! - A memory that would grow past the budget traps the call (a retryable failure: the event
//!   is tried again, when other calls have given memory back).
//! - An instance is kept for reuse only while the budget is at most half used, itself
//!   included; otherwise it is dropped after its call and its memory given back. Kept
//!   instances therefore hold at most about half the budget, and calls always have the rest.
//!
//! The charge of an instance is what its memories grew to (the pooling allocator reserves
//! address space, not memory, for the rest of each slot). `firstcome_plugin_memory_bytes`
//! reports the account.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::{ResourceLimiter, StoreLimits};

/// What one table element is charged.
const TABLE_ELEMENT_BYTES: usize = 16;

/// The account every instance's memory is charged to.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

/// Why a memory could not grow: the budget is used up.
#[derive(Debug, thiserror::Error)]
#[error(
    "the host's plugin memory budget ({0} MiB, plugins.memory_budget_mb) is used up by other \
     instances; the event is tried again"
)]
pub struct BudgetExceeded(pub usize);

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether an instance may be kept for reuse now (the budget at most half used).
    pub fn may_keep(&self) -> bool {
        self.used() <= self.limit / 2
    }

    fn reserve(&self, bytes: usize) -> bool {
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok();
        self.report();
        reserved
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.report();
    }

    fn report(&self) {
        metrics::gauge!("firstcome_plugin_memory_bytes").set(self.used() as f64);
    }
}

/// One store's limits: the instance's own (`memory_mb`, tables, instances) and its share of
/// the budget, given back when the store is dropped.
#[derive(Debug)]
pub struct Limiter {
    own: StoreLimits,
    budget: Arc<MemoryBudget>,
    charged: usize,
}

impl Limiter {
    pub fn new(own: StoreLimits, budget: Arc<MemoryBudget>) -> Self {
        Self {
            own,
            budget,
            charged: 0,
        }
    }

    /// Takes `more` bytes from the budget for this store, or traps the growth.
    fn charge(&mut self, more: usize) -> wasmtime::Result<bool> {
        if !self.budget.reserve(more) {
            metrics::counter!("firstcome_plugin_memory_budget_refusals_total").increment(1);
            return Err(BudgetExceeded(self.budget.limit >> 20).into());
        }
        self.charged += more;
        Ok(true)
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.own.memory_growing(current, desired, maximum)?
            || maximum.is_some_and(|max| desired > max)
        {
            return Ok(false);
        }
        self.charge(desired.saturating_sub(current))
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.own.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.own.table_growing(current, desired, maximum)?
            || maximum.is_some_and(|max| desired > max)
        {
            return Ok(false);
        }
        // A table element is at most two pointers.
        self.charge(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.own.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.own.instances()
    }

    fn tables(&self) -> usize {
        self.own.tables()
    }

    fn memories(&self) -> usize {
        self.own.memories()
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_budget_is_refused_and_drops_give_back() {
        let budget = MemoryBudget::new(10 << 20);
        let own = || {
            wasmtime::StoreLimitsBuilder::new()
                .memory_size(8 << 20)
                .build()
        };
        let mut a = Limiter::new(own(), budget.clone());
        let mut b = Limiter::new(own(), budget.clone());
        assert!(a.memory_growing(0, 6 << 20, None).unwrap());
        assert!(!budget.may_keep(), "more than half used");
        assert!(
            b.memory_growing(0, 6 << 20, None).is_err(),
            "the budget is used up"
        );
        assert!(b.memory_growing(0, 4 << 20, None).unwrap());
        drop(a);
        assert_eq!(budget.used(), 4 << 20);
        assert!(budget.may_keep());
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}

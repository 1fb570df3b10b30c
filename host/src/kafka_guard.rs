//! A guard around one function of the librdkafka this binary links (2.12.1, built from source
//! by `rdkafka-sys`), which otherwise crashes the host on an answer a broker may give.
//!
//! When a topic is deleted under a live consumer, a Kafka-protocol broker may answer the
//! consumer's Fetch for it with `UNKNOWN_TOPIC_OR_PARTITION`, a zero topic id and a
//! `CurrentLeader` tag (tansu 0.6 does). librdkafka turns the tag into a metadata update
//! (KIP-951's leader discovery) for a topic with neither an id nor a name, and
//! `rd_kafka_metadata_update_op` then looks that topic up by its name: `strcmp(NULL, …)`, a
//! SIGSEGV in librdkafka's main thread, 0.1–0.5 s after the deletion, on every host at once.
//! No newer librdkafka is published through the `rdkafka` crate, so the binary is linked with
//! `--wrap=rd_kafka_metadata_update_op` (see `build.rs`): every call goes through
//! [`__wrap_rd_kafka_metadata_update_op`], which gives such a topic a name no topic can have.
//! librdkafka finds no topic of that name in its cache, logs "Topic (no name or id) not found
//! in cache" and goes on, as it does for any update about a topic it does not know.
//!
//! Only the `firstcome` binary is linked this way; hosts started inside a test process are
//! not guarded (the tests that delete a topic run the binary).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};

use rdkafka::bindings::rd_kafka_metadata_t;

unsafe extern "C" {
    /// librdkafka's own function, under the name the linker's `--wrap` gives it.
    fn __real_rd_kafka_metadata_update_op(rk: *mut c_void, mdi: *mut rd_kafka_metadata_t) -> c_int;
}

/// The name given to a topic that has none: no topic may have it (Kafka allows only letters,
/// digits, `.`, `_` and `-`), so it is found in no cache, and librdkafka's warning reads
/// "Topic (no name or id) not found in cache".
static NO_NAME: &[u8] = b"(no name or id)\0";

/// Called by librdkafka's main thread in place of `rd_kafka_metadata_update_op`.
///
/// # Safety
/// Called only by librdkafka, with the pointers it would pass to the real function:
/// `mdi` points to an `rd_kafka_metadata_internal_t`, whose first field is the public
/// `rd_kafka_metadata_t` ("must be kept the first field", `rdkafka_metadata.h`), allocated by
/// librdkafka for this update and writable; it is freed as one block, so a topic name pointer
/// replaced here is never freed on its own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_rd_kafka_metadata_update_op(
    rk: *mut c_void,
    mdi: *mut rd_kafka_metadata_t,
) -> c_int {
    // SAFETY: see the function's contract; `topics` holds `topic_cnt` entries.
    unsafe {
        if let Some(md) = mdi.as_mut()
            && !md.topics.is_null()
            && md.topic_cnt > 0
        {
            let topics = std::slice::from_raw_parts_mut(md.topics, md.topic_cnt as usize);
            for topic in topics.iter_mut().filter(|t| t.topic.is_null()) {
                topic.topic = NO_NAME.as_ptr().cast::<c_char>().cast_mut();
            }
        }
        __real_rd_kafka_metadata_update_op(rk, mdi)
    }
}

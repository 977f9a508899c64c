//! Userspace side of the file sensor's types.
use super::{
    CredentialGeneration, InodeKey, KeptKey, KeptReads, KernelOffsets, ReadStats, UnseenKey,
    UnseenRead,
};
use crate::file::ReadKey;

// SAFETY: repr(C), integers only, no padding (sizes asserted beside each type).
unsafe impl aya::Pod for KernelOffsets {}
unsafe impl aya::Pod for InodeKey {}
unsafe impl aya::Pod for CredentialGeneration {}
unsafe impl aya::Pod for ReadKey {}
unsafe impl aya::Pod for ReadStats {}
unsafe impl aya::Pod for UnseenKey {}
unsafe impl aya::Pod for UnseenRead {}
unsafe impl aya::Pod for KeptKey {}
unsafe impl aya::Pod for KeptReads {}

impl ReadStats {
    /// The counter over every CPU: reads added up, the latest read time.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a ReadStats>) -> ReadStats {
        per_cpu
            .into_iter()
            .fold(ReadStats::default(), |acc, s| ReadStats {
                count: acc.count + s.count,
                last_read_ns: acc.last_read_ns.max(s.last_read_ns),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_sum_adds_counts_and_keeps_the_latest_time() {
        let cpus = [
            ReadStats {
                count: 2,
                last_read_ns: 50,
            },
            ReadStats::default(),
            ReadStats {
                count: 3,
                last_read_ns: 70,
            },
        ];
        assert_eq!(
            ReadStats::sum(&cpus),
            ReadStats {
                count: 5,
                last_read_ns: 70
            }
        );
    }
}

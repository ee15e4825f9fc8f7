//! The engine reads blocks through [`BlockReader`]: a block kept outside the data directory
//! (here in memory, as one on an object store would be) is read beside the engine's own files,
//! ordered by its sequence, merged into a file by compaction and removed by retention.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_model::{
    Fields, Limits, Matcher, MetadataHints, Sample, SelectHints, SeriesKey, SeriesKeyRef, Storage,
    Tenant, WriteBatch,
};
use strata_tsdb::{BlockInfo, BlockReader, ChunkMeta, SeriesLimiter, Tsdb, TsdbError, TsdbOptions};

/// A series' labels.
type Pairs<'a> = &'a [(&'a str, &'a str)];

const H: i64 = 3_600_000;
const D: i64 = 24 * H;

/// A block held in memory: series in label order, each one "chunk" (its offset is its number).
struct MemBlock {
    seq: u64,
    series: Vec<(SeriesKey, Vec<Sample>)>,
    name: PathBuf,
    removed: Mutex<bool>,
}

impl MemBlock {
    fn new(seq: u64, rows: &[(Pairs<'_>, Vec<Sample>)]) -> Arc<MemBlock> {
        let mut series: Vec<(SeriesKey, Vec<Sample>)> = rows
            .iter()
            .map(|(l, s)| {
                let mut pairs: Vec<_> = l.to_vec();
                pairs.sort();
                let pairs = pairs.into_iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
                (SeriesKey::from_sorted_pairs(pairs), s.clone())
            })
            .collect();
        series.sort_by(|a, b| a.0.as_ref().cmp_as_labels(&b.0.as_ref()));
        Arc::new(MemBlock {
            seq,
            series,
            name: PathBuf::from(format!("mem://block-{seq}")),
            removed: Mutex::new(false),
        })
    }

    fn chunk(&self, id: u32) -> Result<ChunkMeta, TsdbError> {
        let (_, s) = self.series.get(id as usize).ok_or(TsdbError::Corrupt {
            path: self.name.clone(),
            reason: format!("no series {id}"),
        })?;
        let (first, last) = (s[0], s[s.len() - 1]);
        Ok(ChunkMeta::new(
            u64::from(id),
            0,
            0,
            first.timestamp,
            last.timestamp,
            s.len() as u32,
            Some(last.value),
        ))
    }
}

impl BlockReader for MemBlock {
    fn info(&self) -> BlockInfo {
        let all = self
            .series
            .iter()
            .flat_map(|(_, s)| s.iter().map(|x| x.timestamp));
        BlockInfo {
            seq: self.seq,
            min_t: all.clone().min().unwrap(),
            max_t: all.max().unwrap(),
            bytes: 0,
        }
    }

    fn location(&self) -> &Path {
        &self.name
    }

    fn len(&self) -> usize {
        self.series.len()
    }

    fn select(&self, matchers: &[Matcher]) -> Result<Vec<u32>, TsdbError> {
        Ok((0..self.series.len() as u32)
            .filter(|&i| Matcher::all_match(matchers, self.series[i as usize].0.as_ref()))
            .collect())
    }

    fn meta(&self, id: u32) -> Result<ChunkMeta, TsdbError> {
        self.chunk(id)
    }

    fn entry(&self, id: u32, key: &mut Vec<u8>) -> Result<ChunkMeta, TsdbError> {
        let m = self.chunk(id)?;
        key.clear();
        key.extend_from_slice(self.series[id as usize].0.as_ref().as_bytes());
        Ok(m)
    }

    fn find(&self, key: SeriesKeyRef<'_>) -> Result<Option<ChunkMeta>, TsdbError> {
        match self.series.iter().position(|(k, _)| k.as_ref() == key) {
            Some(i) => self.chunk(i as u32).map(Some),
            None => Ok(None),
        }
    }

    fn label_names(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), TsdbError> {
        for (k, _) in &self.series {
            k.as_ref().pairs().for_each(|(n, _)| f(n));
        }
        Ok(())
    }

    fn label_values(&self, name: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<(), TsdbError> {
        for (k, _) in &self.series {
            if let Some(v) = k.as_ref().get(name) {
                f(v);
            }
        }
        Ok(())
    }

    fn read_range(
        &self,
        m: &ChunkMeta,
        _key: SeriesKeyRef<'_>,
        start: i64,
        end: i64,
        _fields: Fields,
        out: &mut Vec<Sample>,
    ) -> Result<(), TsdbError> {
        let (_, s) = &self.series[m.offset() as usize];
        out.extend(s.iter().filter(|x| (start..=end).contains(&x.timestamp)));
        Ok(())
    }

    fn remove(&self) -> std::io::Result<()> {
        *self.removed.lock() = true;
        Ok(())
    }
}

fn batch(rows: &[(Pairs<'_>, i64, f64)]) -> WriteBatch {
    let mut b = WriteBatch::new(Tenant::default_tenant());
    for (labels, t, v) in rows {
        let mut l: Vec<(&[u8], &[u8])> = labels
            .iter()
            .map(|(a, b)| (a.as_bytes(), b.as_bytes()))
            .collect();
        b.push_series(&mut l, &[Sample::new(*t, *v)], None, &Limits::default())
            .unwrap();
    }
    b
}

fn all(db: &Tsdb) -> Vec<(String, Vec<(i64, f64)>)> {
    let hints = SelectHints {
        start: i64::MIN / 2,
        end: i64::MAX / 2,
        max_samples: None,
        fields: Fields::All,
    };
    db.select(
        &Tenant::default_tenant(),
        &[Matcher::equal("__name__", "up")],
        &hints,
    )
    .unwrap()
    .into_iter()
    .map(|s| {
        let v = s.samples.iter().map(|x| (x.timestamp, x.value)).collect();
        (s.labels.to_string(), v)
    })
    .collect()
}

fn open(dir: &Path, opts: TsdbOptions) -> Tsdb {
    Tsdb::open(dir, opts, SeriesLimiter::new(1000)).unwrap()
}

const A: Pairs<'static> = &[("__name__", "up"), ("job", "a")];
const B: Pairs<'static> = &[("__name__", "up"), ("job", "b")];

#[test]
fn an_attached_block_is_read_merged_and_expired_like_the_engines_own() {
    let dir = tempfile::tempdir().unwrap();
    let now = strata_model::time::now_ms();
    // An old day (whole, for compaction) and the current hours.
    let day = (now - 5 * D).div_euclid(D) * D;
    let db = open(dir.path(), TsdbOptions::default());
    db.append(&batch(&[(A, day + H, 1.0), (A, day + 2 * H, 2.0)]), 0);
    db.flush().unwrap();
    db.append(&batch(&[(A, now - H, 9.0)]), 1);
    db.flush().unwrap();
    // Written after the engine's blocks: its value at `day + 2h` wins over theirs.
    let mem = MemBlock::new(
        100,
        &[
            (A, vec![Sample::new(day + 2 * H, 20.0)]),
            (B, vec![Sample::new(day + 3 * H, 3.0)]),
        ],
    );
    db.attach_block(&Tenant::default_tenant(), mem.clone());
    let want = vec![
        (
            r#"up{job="a"}"#.to_string(),
            vec![(day + H, 1.0), (day + 2 * H, 20.0), (now - H, 9.0)],
        ),
        (r#"up{job="b"}"#.to_string(), vec![(day + 3 * H, 3.0)]),
    ];
    assert_eq!(all(&db), want);
    let range = MetadataHints {
        start: i64::MIN / 2,
        end: i64::MAX / 2,
        limit: None,
    };
    let t = Tenant::default_tenant();
    assert_eq!(db.label_values(&t, "job", &[], &range).unwrap(), ["a", "b"]);
    let only_b = [Matcher::equal("job", "b")];
    assert_eq!(
        db.label_names(&t, &only_b, &range).unwrap(),
        ["__name__", "job"]
    );

    // The head beats it; blocks flushed later are numbered after it.
    db.append(&batch(&[(B, day + 3 * H, 30.0)]), 2);
    assert_eq!(all(&db)[1].1, vec![(day + 3 * H, 30.0)]);
    db.flush().unwrap();
    assert_eq!(all(&db)[1].1, vec![(day + 3 * H, 30.0)]);
    // The latest flush's window is still being written; it lies in the current hours.
    db.append(&batch(&[(A, now - H / 2, 10.0)]), 3);
    db.flush().unwrap();

    // Compaction merges the old day's blocks, the attached one among them, into one file and
    // removes the inputs; the answer is the same, and stays after a reopen without it.
    let m = db.maintain(now).unwrap();
    assert!(m.compacted_blocks >= 2, "{m:?}");
    assert!(*mem.removed.lock(), "the merged attached block is removed");
    let mut want = want;
    want[0].1.push((now - H / 2, 10.0));
    want[1].1 = vec![(day + 3 * H, 30.0)];
    assert_eq!(all(&db), want);
    drop(db);
    let db = open(dir.path(), TsdbOptions::default());
    assert_eq!(all(&db), want);

    // Retention expires an attached block like a file.
    let old = MemBlock::new(200, &[(B, vec![Sample::new(now - 40 * D, 7.0)])]);
    db.attach_block(&t, old.clone());
    assert_eq!(all(&db)[1].1[0], (now - 40 * D, 7.0));
    let m = db.maintain(now).unwrap();
    assert_eq!(m.deleted_blocks, 1);
    assert!(*old.removed.lock());
    assert_eq!(all(&db), want);
}

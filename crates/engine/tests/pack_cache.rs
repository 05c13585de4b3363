//! The pack cache on the real models: a load from the (mapped) cache gives bit-identical logits to a
//! fresh repack (Q4_K_M with Q5_0/Q6_K tensors; SmolLM2's Q4_1 with a tied Q8_0 table), the
//! file is only written when something was packed, and a damaged file is dropped and rebuilt.

mod common;

use common::*;
use slm_engine::batch::BatchInput;
use slm_engine::block_manager::BlockManager;
use slm_engine::Model;

fn logits(m: &Model) -> Vec<u32> {
    let p = m.tokenizer.encode("def fibonacci(n):\n    if n < 2:", true, false).unwrap();
    let mut blocks = BlockManager::with_prefix_caching(16, 16, false);
    let table = blocks.try_allocate(&p, p.len()).unwrap().blocks().to_vec();
    let mut kv = m.new_kv_cache(16, 16);
    let mut b = BatchInput::default();
    b.push_seq(&p, 0, &table, 16, true);
    m.decoder.forward(&b, &mut kv).iter().map(|v| v.to_bits()).collect()
}

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

#[test]
fn cached_weights_give_the_same_logits_as_a_fresh_repack() {
    for name in [QWEN, SMOLLM2] {
        let dir = std::env::temp_dir().join(format!("slm-pack-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = model_path(name);
        let fresh = logits(&Model::load_with_pack_cache(&path, None, true).unwrap());
        assert!(cache_files(&dir).is_empty());

        // First load packs and writes the file; the second reads it.
        let first = Model::load_with_pack_cache(&path, Some(&dir), true).unwrap();
        let files = cache_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(logits(&first), fresh, "{name}");
        let written = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
        let cached = Model::load_with_pack_cache(&path, Some(&dir), true).unwrap();
        assert_eq!(logits(&cached), fresh, "{name}: weights from the cache differ");
        assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), written, "a full hit rewrote the file");

        // A truncated file is dropped, and the next load repacks and writes it again. (Mapped
        // files are only ever replaced, not cut: the models using this one go first.)
        drop((first, cached));
        let len = std::fs::metadata(&files[0]).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&files[0]).unwrap().set_len(len / 2).unwrap();
        let repacked = Model::load_with_pack_cache(&path, Some(&dir), true).unwrap();
        assert_eq!(logits(&repacked), fresh, "{name}");
        assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), len);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

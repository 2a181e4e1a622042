#!/usr/bin/env python3
"""RecBole 1.2.1 reference run (SASRec, Pop) for navigen's side-by-side quality benchmark.

Usage:
  run.py --atomic-dir DIR --dataset NAME --models SASRec,Pop --out OUT.json
         [--epochs 200] [--threads T] [--seed 2020] [--max-seq-len 50] [--stopping-step 10]
         [--train-batch-size B]   (default: RecBole's 2048)
         [--time-cap-s S]          (stop after the first epoch that ends past S seconds of fitting;
                                    the best checkpoint so far is the one tested)

Input: DIR/NAME/NAME.inter, a RecBole atomic file with header
`user_id:token<TAB>item_id:token<TAB>timestamp:float`, whose timestamps are exact per-user ranks
(0, 1, 2, ... in chronological order, unique within a user).

Protocol (the same for every model):
  * no interaction filtering at all (every user and item kept, no de-duplication);
  * leave-one-out, eval_args = {split: {LS: valid_and_test}, order: TO, group_by: user, mode: full}:
    per user the last item is the test target, the second last the validation target;
  * full-sort ranking over all items, metrics Recall/NDCG/Hit/MRR @ 1,5,10,20, early stopping on
    valid NDCG@10 evaluated every epoch;
  * the user's history is masked in the ranking (history = every item of the user before the
    target, except the target item itself; the same rule RecBole applies to general models such as
    Pop: used items minus positive items). NOTE: RecBole does NOT do this for sequential models
    (FullSortEvalDataLoader returns history_index=None when MODEL_TYPE is SEQUENTIAL), so for SASRec
    this script supplies the history through a FullSortEvalDataLoader subclass. Early stopping uses
    the masked valid NDCG@10; RecBole's own unmasked numbers for SASRec are reported as well
    ("valid_unmasked", "test_unmasked").

Output: OUT (JSON, see the keys written by main()) and OUT.test_items.tsv (one line per user of
RecBole's test split, `user_token<TAB>item_token`, in RecBole's internal user-id order).
Everything RecBole writes (log/, log_tensorboard/, saved/) goes under OUT.work/ next to OUT.
Progress goes to stderr.
"""
import argparse
import json
import os
import platform
import sys
import time
import types
import warnings
from pathlib import Path

METRICS = ["Recall", "NDCG", "Hit", "MRR"]
TOPK = [1, 5, 10, 20]
VALID_METRIC = "NDCG@10"
SASREC_HPARAMS = [
    "n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob", "attn_dropout_prob",
    "hidden_act", "layer_norm_eps", "initializer_range", "loss_type",
]
TRAIN_PARAMS = [
    "epochs", "train_batch_size", "learner", "learning_rate", "weight_decay", "clip_grad_norm",
    "eval_step", "stopping_step", "valid_metric", "eval_batch_size", "train_neg_sample_args",
    "MAX_ITEM_LIST_LENGTH", "eval_args", "metrics", "topk", "repeatable", "seed", "reproducibility",
    "shuffle", "enable_amp",
]


def log(msg):
    print(f"[recbole-bench] {msg}", file=sys.stderr, flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atomic-dir", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", default="SASRec,Pop")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=2020)  # RecBole's default seed
    ap.add_argument("--max-seq-len", type=int, default=50)
    ap.add_argument("--stopping-step", type=int, default=10)
    ap.add_argument("--train-batch-size", type=int, default=None,
                    help="override RecBole's train_batch_size (default: RecBole's, 2048)")
    ap.add_argument("--time-cap-s", type=float, default=None,
                    help="stop fitting after the first epoch that ends past this many seconds")
    return ap.parse_args()


class TimeCap(Exception):
    """Raised from the epoch callback when --time-cap-s has passed."""


def write_json(path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def write_tsv(path, pairs):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{u}\t{i}\n" for u, i in pairs))
    tmp.replace(path)


def stub_ray():
    """recbole/__init__ imports recbole.quick_start, which does `from ray import tune` (used only by
    the hyper-parameter tuner). Plain training needs no ray, so stand in a stub when it is absent."""
    try:
        import ray  # noqa: F401
        return
    except ImportError:
        pass

    def report(**_kw):
        raise RuntimeError("ray is not installed (stub installed by run.py)")

    ray = types.ModuleType("ray")
    tune = types.ModuleType("ray.tune")
    tune.report = report
    ray.tune = tune
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = tune


def main():
    args = parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out = Path(args.out).resolve()
    atomic_dir = Path(args.atomic_dir).resolve()
    inter_file = atomic_dir / args.dataset / f"{args.dataset}.inter"
    if not inter_file.is_file():
        # RecBole would otherwise try to download a dataset of that name.
        sys.exit(f"run.py: {inter_file} not found")
    work = out.parent / (out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)

    # Threads: set before torch/numpy load their thread pools.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    # torch >= 2.6 defaults torch.load(weights_only=True); RecBole's checkpoint (ours, trusted)
    # pickles its Config, so reloading the best model would fail. No effect on torch 2.5.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    # RecBole's Config parses sys.argv for `--key=value` overrides; keep ours away from it.
    sys.argv = sys.argv[:1]
    # RecBole writes ./log/, ./log_tensorboard/ (and saved/ by default) under the CWD.
    os.chdir(work)

    # RecBole 1.2.1 on pandas 2.2 / torch 2.5 emits FutureWarnings (chained assignment,
    # torch.cuda.amp.GradScaler, torch.load weights_only); they are harmless here.
    warnings.filterwarnings("ignore", category=FutureWarning)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    stub_ray()
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.dataloader import FullSortEvalDataLoader
    from recbole.evaluator import Evaluator
    from recbole.utils import get_model, get_trainer, init_logger, init_seed, ModelType
    # Importing the sequential models runs recbole/model/sequential_recommender/sine.py, which calls
    # torch.autograd.set_detect_anomaly(True) at module level for the whole process (slows
    # training down a lot). Import them now and switch it off again (re-checked before each fit).
    import recbole.model.sequential_recommender  # noqa: F401
    torch.autograd.set_detect_anomaly(False)

    class HistoryMaskedSeqLoader(FullSortEvalDataLoader):
        """Full-sort eval loader for sequential models that also returns history_index, so that
        Trainer._full_sort_batch_eval sets the scores of the user's history items to -inf."""

        def __init__(self, base, uid2hist):
            self.uid2hist = uid2hist
            super().__init__(base.config, base._dataset, base._sampler, shuffle=False)

        def collate_fn(self, index):
            interaction, _, positive_u, positive_i = super().collate_fn(index)
            hist = [self.uid2hist[u] for u in interaction[self.uid_field].tolist()]
            history_u = torch.cat([torch.full_like(h, i) for i, h in enumerate(hist)])
            history_i = torch.cat(hist)
            return interaction, (history_u, history_i), positive_u, positive_i

    def jsonable(v):
        if isinstance(v, dict):
            return {str(k): jsonable(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [jsonable(x) for x in v]
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        if isinstance(v, (np.integer, np.floating)):
            return v.item()
        return str(v)

    def metric_dict(res):
        return {k.lower(): float(v) for k, v in res.items()}

    result = {
        "recbole": recbole.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dataset": args.dataset,
        "users": None,
        "items": None,
        "history_masked": True,
        "history_mask_rule": "all items of the user before the target, except the target item",
        "threads": args.threads,
        "seed": args.seed,
        "models": {},
    }
    test_pairs = None  # [(user_token, item_token)] from RecBole's test split

    for model_name in models:
        log(f"=== {model_name} on {args.dataset} ===")
        config_dict = {
            # environment
            "data_path": str(atomic_dir),
            "checkpoint_dir": str(work / "saved"),
            "gpu_id": "",
            "use_gpu": False,
            "seed": args.seed,
            "reproducibility": True,
            "show_progress": False,
            "save_dataset": False,
            "save_dataloaders": False,
            "log_wandb": False,
            "worker": 0,
            # data: load the three columns, no filtering / de-duplication / normalisation
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "rm_dup_inter": None,
            "val_interval": None,
            "user_inter_num_interval": "[0,inf)",
            "item_inter_num_interval": "[0,inf)",
            "normalize_all": False,
            "normalize_field": None,
            "benchmark_filename": None,
            "MAX_ITEM_LIST_LENGTH": args.max_seq_len,
            # protocol
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                          "mode": "full"},
            "metrics": METRICS,
            "topk": TOPK,
            "valid_metric": VALID_METRIC,
            "eval_step": 1,
            "epochs": args.epochs,
            "stopping_step": args.stopping_step,
            # SASRec with CE needs it (RecBole raises otherwise); for Pop the default uniform
            # negative sampling would add the sampled negatives to Pop's item counts.
            "train_neg_sample_args": None,
        }
        if model_name == "SASRec":
            config_dict["loss_type"] = "CE"
        if args.train_batch_size:
            config_dict["train_batch_size"] = args.train_batch_size

        config = Config(model=model_name, dataset=args.dataset, config_dict=config_dict)
        # Config points ml-100k at RecBole's bundled copy; always read the caller's file.
        config["data_path"] = str(atomic_dir / args.dataset)
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)

        t0 = time.time()
        dataset = create_dataset(config)
        uid_f, iid_f, time_f = dataset.uid_field, dataset.iid_field, dataset.time_field
        # Before build() inter_feat is still RecBole's remapped pandas frame: per-user sequences
        # in internal ids, for the history masks and the consistency checks below.
        df = dataset.inter_feat
        if df.duplicated([uid_f, time_f]).any():
            sys.exit("run.py: duplicate (user, timestamp) pairs; timestamps must be per-user ranks")
        df = df.sort_values([uid_f, time_f], kind="stable")
        seqs = {int(u): g.tolist() for u, g in df.groupby(uid_f, sort=False)[iid_f]}
        train_data, valid_data, test_data = data_preparation(config, dataset)
        prep_s = time.time() - t0
        is_seq = config["MODEL_TYPE"] == ModelType.SEQUENTIAL

        # Test / valid targets as RecBole split them (last / second-last interaction per user).
        def targets(loader):
            inter = loader._dataset.inter_feat
            t = dict(zip(inter[uid_f].tolist(), inter[iid_f].tolist()))
            assert len(t) == len(inter), "more than one evaluation row for a user"
            return t

        test_t, valid_t = targets(test_data), targets(valid_data)
        for u, t in test_t.items():
            s = seqs[u]
            assert t == s[-1], f"user {u}: RecBole test item {t} is not the last item {s[-1]}"
            if u in valid_t:
                assert valid_t[u] == s[-2], f"user {u}: valid item is not the second-last item"
        users = sorted(test_t)
        pairs = list(zip(dataset.id2token(uid_f, users).tolist(),
                         dataset.id2token(iid_f, [test_t[u] for u in users]).tolist()))
        # RecBole splits a sequential model's augmented rows (one per target, n-1 per user), a
        # general model's raw interactions (n per user): users with 2 items get a test row only
        # for Pop, users with 3 items a valid row only for Pop. Equal test splits when every user
        # has >= 3 items.
        same_split = None
        if test_pairs is None:
            test_pairs = pairs
            result["users"] = len(test_t)
            result["items"] = dataset.item_num - 1  # item id 0 is RecBole's [PAD]
            write_tsv(out.with_name(out.name + ".test_items.tsv"), pairs)
        else:
            same_split = sorted(test_pairs) == sorted(pairs)
            if not same_split:
                log(f"WARNING: {model_name}'s test split differs from {models[0]}'s")
                write_tsv(out.with_name(f"{out.name}.{model_name}.test_items.tsv"), pairs)
        log(f"{len(seqs)} users, {dataset.item_num - 1} items, {dataset.inter_num} interactions; "
            f"{len(test_t)} test / {len(valid_t)} valid users; data prep {prep_s:.1f}s")

        unmasked = {}
        if is_seq:
            empty = torch.zeros(0, dtype=torch.int64)

            def hist_masks(tgt, n_before):
                h = [empty] * dataset.user_num
                for u, t in tgt.items():
                    items = set(seqs[u][:len(seqs[u]) - n_before]) - {t}
                    h[u] = torch.tensor(sorted(items), dtype=torch.int64)
                return h

            unmasked = {"valid": valid_data, "test": test_data}
            valid_data = HistoryMaskedSeqLoader(valid_data, hist_masks(valid_t, 2))
            test_data = HistoryMaskedSeqLoader(test_data, hist_masks(test_t, 1))

        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

        # Per-epoch timings and best epoch (same >= rule as recbole.utils.early_stopping).
        stats = {"train_s": 0.0, "valid_s": 0.0, "epochs": 0, "best": None, "best_epoch": -1}
        train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

        def timed_train(*a, **kw):
            s = time.time()
            r = train_epoch(*a, **kw)
            stats["train_s"] += time.time() - s
            stats["epochs"] += 1
            return r

        def timed_valid(*a, **kw):
            s = time.time()
            r = valid_epoch(*a, **kw)
            stats["valid_s"] += time.time() - s
            return r

        stats["stopped_by"] = "epochs"
        stats["curve"] = []

        def on_epoch(epoch_idx, valid_score):
            if stats["best"] is None or valid_score >= stats["best"]:
                stats["best"], stats["best_epoch"] = valid_score, epoch_idx
            stats["curve"].append([epoch_idx, round(float(valid_score), 6),
                                   round(time.time() - t0, 1)])
            log(f"{model_name} epoch {epoch_idx}: valid {VALID_METRIC}={valid_score:.4f} "
                f"(best {stats['best']:.4f} @ {stats['best_epoch']}), "
                f"train {stats['train_s']:.0f}s total")
            # RecBole saves the best checkpoint before it calls back, so stopping here loses
            # nothing; the test below loads that checkpoint.
            if args.time_cap_s is not None and time.time() - t0 > args.time_cap_s:
                raise TimeCap()

        trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
        torch.autograd.set_detect_anomaly(False)
        assert not torch.is_anomaly_enabled()
        t0 = time.time()
        try:
            trainer.fit(train_data, valid_data, verbose=True, saved=True, show_progress=False,
                        callback_fn=on_epoch)
            if stats["epochs"] < config["epochs"] and trainer.epochs == config["epochs"]:
                stats["stopped_by"] = "early_stopping"
        except TimeCap:
            stats["stopped_by"] = "time_cap"
            log(f"{model_name}: time cap of {args.time_cap_s:.0f}s reached after "
                f"{stats['epochs']} epochs")
        fit_s = time.time() - t0

        # Final numbers from the best checkpoint, at full precision (RecBole rounds to
        # metric_decimal_place=4, which stays in force for early stopping).
        trainer.evaluate(test_data, load_best_model=True)  # loads the best checkpoint
        config["metric_decimal_place"] = 12
        trainer.evaluator = Evaluator(config)
        t0 = time.time()
        test_res = trainer.evaluate(test_data, load_best_model=False)
        eval_s = time.time() - t0
        valid_res = trainer.evaluate(valid_data, load_best_model=False)
        entry = {
            "test": metric_dict(test_res),
            "valid": metric_dict(valid_res),
            "history_masked": True,
            "test_users": len(test_t),
            "valid_users": len(valid_t),
        }
        if same_split is not None:
            entry["same_test_split_as_first_model"] = same_split
        for phase, loader in unmasked.items():
            entry[f"{phase}_unmasked"] = metric_dict(trainer.evaluate(loader, load_best_model=False))
        hp = SASREC_HPARAMS if model_name == "SASRec" else []
        cfg = {k: jsonable(config[k]) for k in hp + TRAIN_PARAMS if k in config}
        cfg["threads"] = args.threads
        cfg["time_cap_s"] = args.time_cap_s
        if trainer.epochs != config["epochs"]:
            cfg["epochs"] = trainer.epochs  # TraditionalTrainer (Pop) always runs one epoch
        entry.update({
            "train_seconds": round(stats["train_s"], 3),
            "valid_seconds": round(stats["valid_s"], 3),
            "fit_seconds": round(fit_s, 3),
            "eval_seconds": round(eval_s, 3),
            "data_prep_seconds": round(prep_s, 3),
            "epochs_run": stats["epochs"],
            "best_epoch": stats["best_epoch"],
            "stopped_by": stats["stopped_by"],
            "valid_curve": stats["curve"],
            "config": cfg,
        })
        result["models"][model_name] = entry
        write_json(out, result)  # after every model, so a long run leaves partial results
        t = entry["test"]
        log(f"{model_name}: test recall@10={t['recall@10']:.4f} ndcg@10={t['ndcg@10']:.4f}; "
            f"{stats['epochs']} epochs (best {stats['best_epoch']}), train {stats['train_s']:.1f}s, "
            f"valid {stats['valid_s']:.1f}s, test eval {eval_s:.2f}s")

    write_json(out, result)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The typed sections of an experiment config (`Config`): every key, its type, default and description."""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mtl import storage
from mtl.errors import ConfigError
from mtl.labels import PROTOCOLS, get_protocol


Role = Literal["teacher", "student"]  # train.role: one objective each (mtl.objectives.objective.OBJECTIVES)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    dir: str = Field("runs/demo", description="the run folder: a local or shared path, or a bucket URI (s3://, gs://)")


class AugmentConfig(_Section):
    crop_scale: float = Field(1.2, ge=1.0, description="resize factor before the random crop (reference: 1.2)")
    flip: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    jitter: float = Field(0.3, ge=0.0, lt=1.0, description="brightness/contrast/saturation jitter strength")


DOWNSAMPLE_PERIOD = 60  # every "1 in N" divides it: index.json buckets training labels by frame % 60


def _one_in(n: int, what: str = "") -> int:
    if n < 1 or DOWNSAMPLE_PERIOD % n:
        raise ValueError(f"{what}keep 1 in N needs N >= 1 dividing {DOWNSAMPLE_PERIOD}, not {n}")
    return n


class DownsampleConfig(_Section):
    """Thinning of the training frames of `sources`, per task and EXPR class, before balancing (docs/recipe.md §4.5;
    the reference's Aff-Wild2 down-sampling). Of such a frame, the label of a task (class) thinned 1 in N is kept
    iff (frame + phase) % N == 0, the phase drawn from `seed`; validation is never thinned."""

    sources: list[str] = Field(["affwild2"], description="registered sources whose training frames are thinned")
    expr: dict[str, int] = Field({}, description="EXPR class name (Neutral, ..., Surprise) -> keep 1 in N "
                                                 "(N divides 60; paper: Neutral 10, Happiness 2, Sadness 2)")
    va: int = Field(1, description="keep the VA label of 1 in N frames (N divides 60; paper: 5)")
    au: int = Field(1, description="keep the AU label of 1 in N frames (N divides 60; paper: 1, none dropped)")
    seed: int = Field(0, description="draws each label's phase: one thinned subset for the teacher and every "
                                     "student, as the reference's one thinned list (not train.seed, which differs "
                                     "per student)")

    @field_validator("expr")
    @classmethod
    def _known_classes(cls, value: dict[str, int]) -> dict[str, int]:
        known = dict.fromkeys(name for protocol in PROTOCOLS.values() for name in protocol.expr_names)
        unknown = sorted(set(value) - set(known))
        if unknown:  # the class set of the chosen protocol is checked by DataConfig
            raise ValueError(f"unknown expression class {', '.join(map(repr, unknown))} (known: "
                             f"{', '.join(known)})")
        return {name: _one_in(n, f"{name}: ") for name, n in value.items()}

    @field_validator("va", "au")
    @classmethod
    def _divides_period(cls, value: int) -> int:
        return _one_in(value)


class DataConfig(_Section):
    protocol: str = Field("abaw2020", description="label schema (mtl.labels.PROTOCOLS): abaw2020 (8 AUs, 7 "
                                                  "expressions) | abaw3 (ABAW3+ releases: 12 AUs, 8 expressions)")
    shards: str = Field("", description="the shard folder `mtl prepare` wrote (index.json + tars): a path, a bucket URI or an "
                                       "http(s) URL")
    image_size: int = Field(112, ge=8, description="the model's input side in pixels (the stored face is cropped and resized "
                                                  "to it)")
    balance: str = Field("paper", description="a registered balancer (mtl.data.balance.BALANCERS): paper | none")
    batch_mode: Literal["mixed", "per_task"] = Field("mixed", description="mixed: one batch with label masks; per_task: one "
                                                  "batch per task per step, as the paper (docs/recipe.md §4)")
    loader_workers: int = Field(2, ge=0, description="loader processes per training rank (0: decode in the training process)")
    shuffle_buffer: int = Field(1000, ge=1, description="samples held for shuffling by each loader worker")
    mean_ir: float = Field(2.0, gt=0.0, description="ML-ROS target imbalance ratio for AUs (reference: 2.0)")
    max_clone_fraction: float = Field(0.5, ge=0.0, description="ML-ROS cap on clones, as a fraction of N")
    augment: AugmentConfig = AugmentConfig()
    downsample: DownsampleConfig = DownsampleConfig()

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            raise ValueError(f"unknown protocol {value!r} (known: {', '.join(PROTOCOLS)})")
        return value

    @model_validator(mode="after")
    def _classes_of_protocol(self) -> "DataConfig":
        names = get_protocol(self.protocol).expr_names
        foreign = [name for name in self.downsample.expr if name not in names]
        if foreign:
            raise ValueError(f"downsample.expr: {', '.join(map(repr, foreign))} is not an expression class of "
                             f"protocol {self.protocol} ({', '.join(names)})")
        return self

    def schema(self):
        """The label schema (`mtl.labels.Protocol`) this config trains and scores in."""
        return get_protocol(self.protocol)

    def require_shards(self) -> str:
        """data.shards, which training and the search read: ConfigError when unset."""
        if not self.shards:
            raise ConfigError("config key 'data.shards': required (a shard folder written by `mtl prepare`)")
        return self.shards


FERPLUS_SOURCE = ("`resnet50_ferplus_dag.pth`, folder `fer+` of Albanie's PyTorch model zoo "
                  "(https://www.robots.ox.ac.uk/~albanie/pytorch-models.html)")


class ModelConfig(_Section):
    backbone: str = Field("test_resnet", description="a timm model name or a registered backbone "
                                                    "(mtl.models.backbones.BACKBONES), e.g. resnet50_ferplus")
    backbone_args: dict[str, Any] = Field({}, description="keyword arguments of the backbone's constructor, e.g. "
                                                          "{dropout: 0.0} for resnet50_ferplus, {drop_rate: 0.1} "
                                                          "for a timm model")
    weights: Optional[str] = Field(None, description="backbone or model state dict to start from: a local path or "
                                                    "a storage URI (s3://, gs://, file://)")
    require_weights: bool = Field(False, description="refuse to train without model.weights (paper preset: the "
                                                     "FER+ backbone, docs/recipe.md §1.1)")
    temporal: bool = Field(False, description="the CNN-RNN: a frozen CNN (from model.weights) and a GRU per task over "
                                             "windows of model.seq_len frames")
    seq_len: int = Field(32, ge=1, description="frames per window of the temporal (CNN-RNN) model")
    rnn_hidden: int = Field(64, ge=1, description="GRU hidden size of the temporal model")

    def check_weights(self) -> None:
        """model.weights: required where require_weights says so (the paper preset's FER+ backbone, docs/recipe.md
        §1.1; ConfigError), an existing file when given (FileNotFoundError). Not a validator: a preset that requires
        weights still loads for the commands that train nothing."""
        if self.require_weights and not self.weights:
            source = FERPLUS_SOURCE if self.backbone == "resnet50_ferplus" else "a local state dict file"
            raise ConfigError(f"config key 'model.weights': required (model.require_weights): {self.backbone} starts "
                              f"from pretrained weights, {source}; pass model.weights=PATH, or "
                              "model.require_weights=false to start from random weights")
        if self.weights and not storage.is_file(self.weights):
            raise FileNotFoundError(f"config key 'model.weights': {self.weights}: no such file")


class TrainConfig(_Section):
    role: Role = Field("teacher", description="teacher: ground truth only; student: with the teacher's soft labels "
                                              "(the objective: mtl.objectives.objective.OBJECTIVES)")
    name: Optional[str] = Field(None, description="output folder under run.dir (default: the role)")
    epochs: int = Field(4, ge=1, description="training epochs (raise it and re-run to train on from the last checkpoint)")
    batch_size: int = Field(32, ge=1, description="per rank; per task in per_task batch mode")
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate")
    optimizer: Literal["adam", "adamw"] = Field("adamw", description="Adam (the paper) or AdamW; fused on CUDA")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's betas (the paper: 0.5, 0.999)")
    weight_decay: float = Field(0.05, ge=0.0, description="weight decay (decoupled with AdamW)")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="learning-rate schedule after the warm-up")
    warmup_epochs: float = Field(0.5, ge=0.0, description="linear warm-up, in epochs")
    workers: int = Field(1, ge=0, description="Ray Train workers (DDP ranks); 0 = local mode in this process")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs (and torch threads) per training rank")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the DDP workers: PACK fills a node first, SPREAD uses many nodes")
    gpus_per_worker: float = Field(1.0, gt=0.0, le=1.0, description="GPU share of each training worker on "
                                   "CUDA (runtime.device): 0.5 packs two students or search trials on one GPU")
    cuda_graph: bool = Field(True, description="on CUDA, capture the whole training step as one CUDA graph after "
                                               "warm-up (stays eager where capture fails); CPU is always eager")
    log_every: int = Field(50, ge=1, description="steps between divergence checks (one host sync each; a "
                                                 "non-finite loss stops every rank at the next check)")
    seed: int = Field(0, description="fixes initialisation, data order, balancing and augmentation; students use "
                                    "seed + 1 + i")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept, the best by val_total")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")
    eval_batch_size: int = Field(128, ge=1, description="validation and prediction batch (at least 256 on CUDA)")
    compile: bool = Field(False, description="torch.compile the training model (the DDP-wrapped one, as "
                                             "PyTorch recommends); validation and checkpoints use the plain module")


class LossConfig(_Section):
    lambda_au: float = Field(1.0, ge=0.0, description="weight of the AU loss (the paper: 8)")
    lambda_expr: float = Field(1.0, ge=0.0, description="weight of the expression loss")
    lambda_va: float = Field(1.0, ge=0.0, description="weight of the valence-arousal loss")
    ccc_weight: float = Field(1.0, ge=0.0, description="weight of (1 - CCC) next to the VA bin cross-entropy")


class DistillConfig(_Section):
    temperature: float = Field(1.5, gt=0.0, description="distillation temperature T of the EXPR and VA-bin KL terms")
    alpha: float = Field(0.4, ge=0.0, le=1.0, description="weight of the soft-label term where GT exists")
    t_squared: bool = Field(False, description="scale the KL terms by T^2 (the reference did not)")
    task_weights: bool = Field(True, description="weight the student's heads by loss.lambda_* like the teacher's "
                                                 "(the reference gave every student head weight 1)")
    on_the_fly: bool = Field(False, description="run the teacher on each augmented batch instead of stored labels")
    teacher: Optional[str] = Field(None, description="teacher model file (default RUN/teacher/best.pt)")
    soft_labels: Optional[str] = Field(None, description="stored soft labels (default RUN/soft_labels)")
    views: int = Field(0, ge=0, description="stored augmentation views per sample: the teacher's outputs on K "
                                            "crops/flips/jitters a student replays (0: the centre view only; "
                                            "docs/recipe.md §3.1)")


class StudentsConfig(_Section):
    count: int = Field(3, ge=1, description="students trained (seeds train.seed + 1 + i)")
    epochs: Optional[int] = Field(None, ge=1, description="epochs per student (default: train.epochs)")
    backbones: list[str] = Field(default_factory=list, description="student i uses backbones[i % len]; "
                                                                   "empty: model.backbone")
    workers: Optional[int] = Field(None, ge=0, description="Ray Train workers per student (default: "
                                   "train.workers); 0: each student trains in one Ray task, in-process and "
                                   "without loader processes (no Ray Train run, no Tune trial: the lightest way "
                                   "to train several small students at once on one machine; the same numbers; "
                                   "an interrupted student starts over)")
    concurrent: int = Field(0, ge=0, description="students trained at once (0: as the cluster's resources allow; "
                                                 "students.workers=0: they share the CPUs, N at once ask for "
                                                 "CPUs/N each)")
    select: bool = Field(False, description="greedy forward selection of ensemble members on the tuning half")


class TuneConfig(_Section):
    num_samples: int = Field(4, ge=1, description="draws from the space (each one runs every grid combination)")
    space: Optional[str] = Field(None, description="search space file (tune/NAME.yaml); `mtl tune --space` sets it")
    name: Optional[str] = Field(None, description="search folder RUN/tune/<name> (default: the space file's stem)")
    scheduler: Literal["asha", "pbt", "none"] = Field("asha", description="Tune's trial scheduler: ASHA early "
                                                                           "stopping, population-based training, or none")
    searcher: Literal["random", "optuna"] = Field("random", description="random/grid (Tune's variant generator) "
                                                                         "or Optuna (extra mtl[optuna])")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(4.0, gt=1.0, description="ASHA: 1/reduction_factor of trials pass a rung")
    perturbation_interval: int = Field(1, ge=1, description="PBT: epochs between exploit/explore steps")
    max_concurrent: int = Field(0, ge=0, description="trials at once (0: as the cluster's CPUs allow)")
    before_students: bool = Field(False, description="mtl pipeline: search tune.space after the soft labels and "
                                                     "train every student with the best distill.* and train.lr")


class EvalConfig(_Section):
    """How validation is scored and split (docs/recipe.md §7): epoch selection, Tune's metric and the tuned students
    see only the selection half of the validation videos; reports are scored on the other half."""

    selection: Literal["reference", "report"] = Field(
        "reference", description="val_total for selection: reference = AU + EXPR + CCC_V + CCC_A (the paper's "
                                 "train.py); report = AU + EXPR + mean CCC, the report's total")
    expr_f1: Literal["present", "all"] = Field("present", description="EXPR macro F1 over the classes present in "
                                                                      "truth or prediction (official), or all 7")
    split_seed: int = Field(0, description="seed of the cut of the validation videos into selection/report halves")


class EnsembleConfig(_Section):
    format: Literal["torch-export", "onnx"] = Field(
        "torch-export", description="file of the exported ensemble: a torch.export program (ensemble.pt2) or an "
                                    "ONNX model (ensemble.onnx); temporal members write ensemble_temporal.pt")
    threshold_rule: Literal["f1", "break_even"] = Field(
        "f1", description="per-AU threshold on the selection half: best F1, or precision = recall (reference)")
    bootstrap: int = Field(1000, ge=0, description="video-bootstrap replicates of each reported score's 95 % "
                                                   "interval (0: no intervals)")


class PrepareConfig(_Section):
    """`mtl prepare --config`/overrides; its flags --shard-size and --image-size set these keys."""

    shard_size: int = Field(5000, ge=1, description="samples per shard")
    image_size: int = Field(112, ge=16, description="stored face size (Aff-Wild2's 112 px faces are copied as-is)")


class RuntimeConfig(_Section):
    """Settings of the machine, not of the experiment: they may change when a run is resumed elsewhere.
    Environment variables override them where a cluster sets them for every job (MTL_DDP_TIMEOUT_S,
    MTL_LOCAL_DIR)."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where every stage runs its models (training, soft labels, evaluation, the ensemble's "
                            "predictions, predict): cuda, cpu, or auto = cuda where the Ray cluster (or, off Ray, "
                            "the local machine) has a GPU; `mtl.jobs.ray_session.resolve_device` decides auto once")
    ddp_timeout_s: int = Field(1800, ge=1, description="torch.distributed collective timeout "
                                                       "(env MTL_DDP_TIMEOUT_S overrides)")
    local_dir: Optional[str] = Field(None, description="local scratch folder (wandb files when run.dir is a bucket); "
                                                       "default $MTL_LOCAL_DIR, else the temp dir")

    worker_start_wait_s: int = Field(600, ge=1, description="how long a training waits for Ray to start its workers "
                                                          "(free resources, autoscaling) before it fails in one line "
                                                          "naming what was missing; tried in periods of Ray's "
                                                          "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s)")

    def worker_start_tries(self) -> int:
        """Start-up periods of Ray Train's worker group within worker_start_wait_s (at least 1)."""
        period = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S") or 60)
        return max(1, -(-self.worker_start_wait_s // int(max(1, period))))

    def ddp_timeout(self) -> int:
        return int(os.environ.get("MTL_DDP_TIMEOUT_S") or self.ddp_timeout_s)

    def scratch(self) -> str:
        return storage.scratch_root(self.local_dir)


class Config(_Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    loss: LossConfig = LossConfig()
    distill: DistillConfig = DistillConfig()
    students: StudentsConfig = StudentsConfig()
    tune: TuneConfig = TuneConfig()
    eval: EvalConfig = EvalConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    prepare: PrepareConfig = PrepareConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _use_gpu_alias(cls, data: Any) -> Any:
        """`train.use_gpu` (the former spelling) sets runtime.device: true -> cuda, false -> cpu."""
        train = data.get("train") if isinstance(data, dict) else None
        if not isinstance(train, dict) or "use_gpu" not in train:
            return data
        train = dict(train)
        use_gpu = train.pop("use_gpu")
        runtime = dict(data.get("runtime") or {})
        device = "cuda" if use_gpu else "cpu"
        if use_gpu not in (True, False) or runtime.get("device", device) != device:
            raise ValueError(f"train.use_gpu={use_gpu!r} (an alias of runtime.device) contradicts "
                             f"runtime.device={runtime.get('device')!r}: set runtime.device alone")
        if use_gpu:  # a stored run's `use_gpu: false` is the former default: nothing to say
            warnings.warn("config key train.use_gpu is an alias of runtime.device: write runtime.device=cuda",
                          FutureWarning, stacklevel=2)
        return {**data, "train": train, "runtime": {**runtime, "device": device}}

    def worker_gpus(self) -> float:
        """GPUs of each training worker: train.gpus_per_worker on CUDA, else 0 (runtime.device resolved: `auto`
        counts as 0 here, see `mtl.jobs.ray_session.resolve_device`)."""
        return self.train.gpus_per_worker if self.uses_cuda() else 0.0

    def uses_cuda(self) -> bool:
        return self.runtime.device == "cuda"

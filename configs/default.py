"""Every config key caat_jax reads, with its default and meaning.

Variants (digits.py, cifar10.py, ...) start from this and override; a key
that is not defined here does not exist. Override any key on the command
line: ``--config.optimizer.learning_rate=0.05``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.seed = 0  # one base key per run; data transforms use it too
  # Training method: natural | pgd_at | trades | frl | meta_caat | reinforce_caat.
  c.method = "pgd_at"
  # If non-empty, the main job trains each of these methods in turn, into
  # WORKDIR/<method>, and ends with one side-by-side table (comparison.json).
  c.suite = ()
  # small_cnn | preact_resnet18 | wrn28_10 | wrn34_10 | resnet50
  c.model = "small_cnn"
  c.model_width = 32  # small_cnn only: channels of the first conv
  c.dtype = "float32"  # compute dtype of the model: float32 | bfloat16

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # digits | cifar10 | svhn | imagenet2012
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS dir
  c.data.meta_per_class = 10  # clean balanced hold-out (meta / validation set)
  # none | uniform (new label uniform over the other classes) | pairflip
  # (i -> i+1) | flip2 (two random other classes, r/2 each: what the paper's
  # Table 5 "20% pair-flip" runs used)
  c.data.noise_type = "none"
  c.data.noise_rate = 0.0  # fraction of training labels corrupted
  # Oracle (from the study of why Meta-CAAT loses to TRADES under label
  # noise): drop the training examples whose label the noise
  # changed (the rest keep their true labels): an upper bound for any
  # reweighting of the noisy set. Needs noise_rate > 0 and a noise_type.
  c.data.drop_corrupted = False
  # A control for the methods that use no meta set: its clean examples are
  # also appended to the training split (CAAT's meta set stays held out as
  # well), so a baseline sees every clean example CAAT does.
  c.data.meta_in_train = False
  c.data.imbalance_factor = 1.0  # long-tailed train set if > 1 (class 0 head)
  c.data.test_fraction = 0.2  # digits only: stratified test split (fixed seed)
  c.data.seed = c.get_ref("seed") + 0  # follows seed; overriding it leaves seed alone
  # Streamed datasets (imagenet2012, docs/running.md "ImageNet"): the side of
  # the training crops and evaluation centre crops, the grain worker processes
  # that decode and augment (0: in the training process), and how many steps
  # ahead batches are put on the devices (every dataset).
  c.data.image_size = 224
  c.data.num_workers = 8
  c.data.prefetch = 2

  c.num_epochs = 30
  c.batch_size = 128  # global batch, over all devices and hosts

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"  # sgd (momentum, coupled weight decay as PyTorch)
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "piecewise"  # piecewise | cosine | constant
  c.optimizer.decay_epochs = (15, 25)  # piecewise: epochs at which lr *= factor
  c.optimizer.decay_factor = 0.1
  c.optimizer.warmup_epochs = 0

  # Training-time attack (docs/method.md §2).
  c.attack = ml_collections.ConfigDict()
  c.attack.eps = 8 / 255  # L-inf bound in pixel units
  c.attack.step_size = 2 / 255
  c.attack.step_rule = "fixed"  # fixed: step_size | eps_frac: eps_i / 4
  c.attack.num_steps = 10
  c.attack.unroll = "auto"  # auto (unroll on CPU only) | true | false
  # Threat model of the TRAINING attacks (every method's, Meta-CAAT's meta
  # batch and the grad bound's start points included; evaluation, and FRL's
  # validation attack, stay in pixel space with eval.eps):
  #   pixel: eps, steps and the [0, 1] clip in pixel units (docs/method.md §1).
  #   normalized: the official code's bound: it attacks (x - mean) / std, so
  #     channel c gets the bound eps * std_c, the step step_size * std_c and
  #     the start noise 0.001 std_c N (about 2/255 for eps = 8/255 on
  #     CIFAR-10); the box stays the pixel [0, 1].
  #   normalized_clip: that, plus the official clip of normalised values to
  #     [0, 1]: pixels are clipped to [mean_c, mean_c + std_c] (within [0, 1])
  #     after every step, which moves each pixel outside that range however
  #     small the bound (training inputs, not the clean x of the loss).
  # Per-sample bounds (caat.*, metrics "eps") stay in the units of attack.eps.
  c.attack.threat_model = "pixel"

  c.trades = ml_collections.ConfigDict()
  c.trades.beta = 6.0  # CE + beta * KL; the paper's 1/lambda (also FRL's beta)

  # CAAT (docs/method.md §3-5): per-sample adversaries and anti-adversaries.
  c.caat = ml_collections.ConfigDict()
  c.caat.lam = 1.0  # weight of KL(f(x) || f(x_adv)); paper {2/3, 1, 1.5, 6}
  c.caat.tau = 1.0  # weighting-net softmax temperature (0.001 kills meta-grads)
  c.caat.hidden = 100  # weighting-net hidden width
  # combined (learned alpha/beta) | adversarial_only | rule (head classes
  # anti-adversarial, tail classes adversarial, fixed eps: Table 9 "Without")
  c.caat.direction = "combined"
  # Meta-CAAT's weights: soft (alpha, beta from the weighting net) | hard (one
  # direction per sample, the paper's {0, 1}: forward alpha = 1[alpha >=
  # beta], beta = 1 - alpha, also in the grad bound's mix; the meta-gradient
  # flows through the soft alpha, straight-through). Reinforce-CAAT draws
  # one direction per sample anyway and ignores it.
  c.caat.weights = "soft"
  c.caat.bound = "fixed"  # fixed | remargin (needs fairness) | grad (Eq. 26)
  c.caat.grad_bound_offset = 0.9  # the varepsilon of Eq. 26
  # Where Eq. 26's gradient norms are taken: start (each attack's loss at its
  # own start point x + 0.001 N; the KL one is mostly that noise) | clean (CE
  # input-gradient norm at x, for both).
  c.caat.grad_bound_point = "start"
  # The anti-adversaries' bounds (Meta-CAAT and Reinforce-CAAT; the
  # adversaries' and the meta objective's stay as they are): each sample's
  # bound (fixed, remargin, grad, or the drawn one) times anti_bound_scale,
  # then capped at anti_bound_cap * attack.eps (0 = no cap; e.g. against the
  # grad bound's larger bounds of corrupted samples). Scale 0: the
  # anti-adversarial term is CE on the clean input (on its clip under
  # attack.threat_model=normalized_clip).
  c.caat.anti_bound_scale = 1.0
  c.caat.anti_bound_cap = 0.0
  c.caat.feature_mask = (1, 1, 1, 1, 1, 1)  # zero a feature out (Fig. 15)
  c.caat.feature_momentum = 0.99  # running standardisation of the features

  # Meta-CAAT's meta step (docs/method.md §5).
  c.meta = ml_collections.ConfigDict()
  # nested_grad | jvp | first_order | k_step | layerwise | neumann | evograd
  c.meta.variant = "jvp"
  c.meta.k = 1  # k_step: look-ahead steps
  c.meta.fd_eps = 0.0  # jvp: central difference at W +- (fd_eps/|v|) v; 0 = exact JVP
  # layerwise (FaMUS): inner products over these top-level modules only: head |
  # last_block | a comma list of module names (e.g. "stage4_block2,head")
  c.meta.layers = "head"
  c.meta.layer_scope = "full"  # full (exact look-ahead) | subset (look-ahead moves S only)
  c.meta.neumann_steps = 1  # neumann: J, the Neumann series' last power (0 = jvp)
  c.meta.neumann_alpha = 0.0  # neumann: series step; 0 = the look-ahead lr
  c.meta.evograd_k = 2  # evograd: perturbed copies (Bohdal et al.: 2)
  c.meta.evograd_sigma = 1e-3  # evograd: perturbation scale
  c.meta.evograd_tau = 0.05  # evograd: softmax temperature of the merge weights
  # lookahead: the meta gradient through a look-ahead step, then the real step
  # with the new Omega | reuse_step: the real step (with the current Omega)
  # serves as the look-ahead, Omega is updated one step stale; saves the
  # look-ahead pass (jvp, layerwise with layer_scope=full, neumann with 0 steps)
  c.meta.schedule = "lookahead"
  c.meta.objective = "robust"  # robust | clean_ce | official
  c.meta.lookahead = "sgd"  # sgd (Meta-Weight-Net) | sgd_momentum_wd (official)
  # Where the meta batch's adversaries are made: lookahead (at W_hat, as the
  # official code; one attack pass inside the meta loss) | current (at W).
  # Either way they are constants for the meta-gradient.
  c.meta.adversary_at = "lookahead"
  c.meta.interval = 1  # meta step every this many steps (official code: 50)
  c.meta.batch_size = 64  # meta batch, from the clean meta set
  c.meta.learning_rate = 1e-3  # Adam on the weighting net

  # FRL fairness constraints (docs/method.md §7); method frl, or meta_caat with enabled.
  c.fairness = ml_collections.ConfigDict()
  c.fairness.enabled = False  # Meta-CAAT: apply FRL class weights / margins
  c.fairness.mode = (
    "reweight_remargin"  # reweight | remargin | reweight_remargin | baseline_reweight
  )
  c.fairness.r1 = 0.05  # multiplier step, halved every halve_every epochs
  c.fairness.r2 = 0.2  # ReMargin step
  c.fairness.tau1 = 0.07  # natural-error tolerance
  c.fairness.tau2 = 0.07  # boundary-error tolerance
  c.fairness.lim = 0.5  # bound on the sum of lambda0 (and of lambda1)
  c.fairness.halve_every = 40
  c.fairness.attack_steps = 20  # validation PGD-k
  c.fairness.step_size = 2 / 255
  c.fairness.baseline_factor = 2.0  # Baseline ReWeight: worst class weight

  # Reinforce-CAAT (docs/method.md §6): a strategy net trained by REINFORCE samples each
  # example's direction and bound. Features use the caat.feature_* keys.
  c.reinforce = ml_collections.ConfigDict()
  c.reinforce.lam = 0.005  # KL weight in Eq. 31; paper: 0.005 CIFAR-10, 0.1 SVHN
  c.reinforce.k = 20  # strategy-net update after every k-th classifier step (Algorithm 2)
  # Reward of a sample's strategy: lookahead (first-order decrease of the robust
  # meta loss on a clean meta batch from a step on its loss; needs the meta set
  # and config.meta.batch_size) | paper (Eq. 34 literally: L0 / -L1, which
  # drives every sample to the adversary).
  c.reinforce.reward = "lookahead"
  c.reinforce.reward_mix = 0.0  # lookahead: + this times the paper's reward (L0 / -L1)
  c.reinforce.meta_lam = 1.0  # lookahead: KL weight of the robust meta loss CE + lam KL
  # auto: sgd for reward=paper (Eq. 35 literally), adam for lookahead | adam | sgd
  c.reinforce.optimizer = "auto"
  c.reinforce.learning_rate = 1e-3  # strategy-net step size (eta_2)
  c.reinforce.hidden = 100  # strategy-net hidden width
  c.reinforce.bound_set = tuple(range(3, 16))  # bound choices, in 1/255 units
  # Reward baseline: auto (none for paper, batch_mean for lookahead) | none |
  # batch_mean (leave-one-out mean of the global batch) | ema
  c.reinforce.baseline = "auto"
  c.reinforce.baseline_momentum = 0.9  # ema baseline: running-mean momentum
  c.reinforce.entropy_bonus = 0.0  # weight of the policy-entropy bonus (paper: 0)

  # Evaluation (docs/method.md §9).
  c.eval = ml_collections.ConfigDict()
  c.eval.attacks = ("pgd20",)  # any of pgd<k>, e.g. pgd10, pgd20, pgd100
  c.eval.eps = c.attack.get_ref("eps") * 1  # follows attack.eps (one way)
  c.eval.step_size = 2 / 255
  c.eval.batch_size = 500
  c.eval.num_examples = 0  # 0 = the whole test split
  c.eval_every = 0  # epochs between per-class evaluations; 0 = only at the end

  c.log_every_steps = 50
  # Checkpoints are also saved at every epoch's end and, on SIGTERM or a
  # preemption notice, at the next step (then the job exits with status 143).
  c.checkpoint_every_steps = 0  # 0 = at the end of every epoch only
  c.keep_checkpoints = 3
  # Checkpoint directory (or run workdir) to initialise the classifier from,
  # e.g. a PGD-AT "hot start"; optimiser state starts fresh.
  c.init_from = ""

  c.parallel = ml_collections.ConfigDict()
  c.parallel.backend = "pmap"  # pmap | shard_map
  # Multi-process runs (one process per host / GPU node): auto | on | off.
  # auto joins when a coordinator is set below or in JAX_COORDINATOR_ADDRESS,
  # under srun with several tasks, or on a multi-host TPU slice; on calls
  # jax.distributed.initialize() (which reads TPU / SLURM / MPI settings).
  c.parallel.distributed = "auto"
  c.parallel.coordinator_address = ""  # "host:port" of process 0; "" = from env
  c.parallel.num_processes = 0  # with coordinator_address; 0 = from env
  c.parallel.process_id = -1  # this process's id; -1 = from env
  # JAX coordination service timeouts, in seconds (caat_jax/multihost.py):
  # start-up wait for every process to join; a process silent this long is
  # declared lost and the others stop (exit 75); wait at the end for the rest.
  c.parallel.init_timeout_s = 300
  c.parallel.heartbeat_timeout_s = 60
  c.parallel.shutdown_timeout_s = 60

  c.bench = ml_collections.ConfigDict()
  # "method [--config.KEY=VALUE ...]": each entry benches one method with the
  # overrides spelled as on the command line; the two unroll rows measure the
  # attack loop rolled and unrolled on this platform.
  c.bench.methods = (
    "natural",
    "pgd_at",
    "pgd_at --config.attack.unroll=true",
    "pgd_at --config.attack.unroll=false",
    "trades",
    "frl",
    "meta_caat --config.meta.variant=jvp",
    "meta_caat --config.meta.variant=nested_grad",
    "meta_caat --config.meta.variant=first_order",
    "meta_caat --config.meta.variant=k_step",
    "meta_caat --config.caat.direction=adversarial_only",
    "reinforce_caat",
  )
  c.bench.reference = "pgd_at"  # the entry step-time ratios are taken against
  c.bench.num_steps = 10
  c.bench.batch_size = 128
  return c

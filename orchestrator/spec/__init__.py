"""The job spec: one YAML document that describes data, model, training and scaling.

Pure package: it imports neither Ray nor torch, so validating a spec is fast and safe anywhere.
Every model forbids unknown keys, so a typo is an error that names its field path. One module
per job: the sections (data, model, train, tune, serve, job), the metrics, the checks across
sections, error formatting and the hardened YAML loader.
"""

from orchestrator.spec.base import IMPORT_PATH_RE, NAME_RE, SpecModel
from orchestrator.spec.checks import TASK_ONLY, apply_overrides, check_search_space, spec_problems, task_problems
from orchestrator.spec.data import (
    FORMAT_EXTENSIONS,
    INPUT_SECTIONS,
    MAX_IMAGE_VALUES,
    MAX_SEQUENCE_LENGTH,
    MAX_TEXT_LENGTH,
    PREPARED_TASKS,
    DataSpec,
    ImageSpec,
    SequenceSpec,
    SeriesSpec,
    Split,
    TextSpec,
    format_from_name,
    is_uri,
)
from orchestrator.spec.errors import MAX_PROBLEMS, format_validation_error, loc_path
from orchestrator.spec.job import (
    JobSpec,
    register_architecture,
    register_input_section,
    resolve_source,
    unregister_architecture,
    unregister_input_section,
)
from orchestrator.spec.loader import MAX_SPEC_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, json_schema, load_spec, parse_spec, read_spec_yaml
from orchestrator.spec.metrics import (
    ACCURACY,
    F1,
    FRACTIONS,
    LOSS,
    MAE,
    METRIC_MODES,
    METRIC_NAMES,
    METRICS,
    PRECISION,
    PROMOTE_RE,
    RECALL,
    RMSE,
    ROC_AUC,
    TEST_METRICS,
    TEST_PREFIX,
    TRAIN_METRICS,
    TRAIN_PREFIX,
    VAL_LOSS,
    VAL_METRICS,
    VAL_PREFIX,
    WHOLE_SPLIT_METRICS,
    ValMetric,
    parse_promote,
)
from orchestrator.spec.model import (
    ARCHITECTURES,
    SEQUENCE_KINDS,
    ArchSpec,
    CNNSpec,
    CustomModelSpec,
    MLPSpec,
    ModelSpec,
    RNNSpec,
    TransformerSpec,
)
from orchestrator.spec.serve import Autoscaling, ServeSpec
from orchestrator.spec.train import CheckpointSpec, EarlyStopping, OutputSpec, ScalingSpec, TrainSpec
from orchestrator.spec.tune import DISTRIBUTIONS, AshaSpec, NoScheduler, Param, TuneSpec

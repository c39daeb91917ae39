"""World models behind one protocol: PlaNet's RSSM, analytic models, the replay buffer, and
filtering stored episodes into beliefs."""

from .analytic import AnalyticModel
from .ensemble import EnsembleConfig, PredictorEnsemble
from .fused import FusedRSSM
from .networks import MLP, ConvDecoder, ConvEncoder, postprocess_image, preprocess_image
from .replay import Episode, ReplayBuffer
from .rssm import ELBOTerms, RSSMConfig, RSSMWorldModel
from .filtering import filter_episodes
from .state import LatentState, WorldModel, WorldModelBase

__all__ = [
    "AnalyticModel", "ConvDecoder", "ConvEncoder", "ELBOTerms", "EnsembleConfig", "Episode", "FusedRSSM", "LatentState", "MLP",
    "PredictorEnsemble", "ReplayBuffer", "RSSMConfig", "RSSMWorldModel", "WorldModel", "WorldModelBase", "filter_episodes",
    "postprocess_image", "preprocess_image",
]

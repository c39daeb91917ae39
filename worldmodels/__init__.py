"""World models behind one protocol: PlaNet's RSSM, analytic models, and the replay buffer."""

from .analytic import AnalyticModel
from .fused import FusedRSSM
from .networks import MLP, ConvDecoder, ConvEncoder, postprocess_image, preprocess_image
from .replay import Episode, ReplayBuffer
from .rssm import ELBOTerms, RSSMConfig, RSSMWorldModel
from .state import LatentState, WorldModel

__all__ = [
    "AnalyticModel", "ConvDecoder", "ConvEncoder", "ELBOTerms", "Episode", "FusedRSSM", "LatentState", "MLP",
    "ReplayBuffer", "RSSMConfig", "RSSMWorldModel", "WorldModel", "postprocess_image", "preprocess_image",
]

"""zennit canonizers for torchvision classifiers beyond ResNet and VGG (test helper, not a test module).

zennit applies rules to *modules*: a functional op (``a + b``, ``x.mean([2, 3])``, ``scale * x``) gets
the plain gradient, which is not the LRP rule relgraph applies to the same ONNX node. zennit ships
canonizers that turn such ops into modules only for ResNet (a ``Sum`` for the residual connection). The
canonizers below do the same for the other torchvision families, so that zennit computes the same LRP as
relgraph and the two can be compared:

- a residual connection becomes zennit's ``Sum`` (the ε-normalized split, as ``ResNetCanonizer``);
- the global average pool at the head becomes an ``AdaptiveAvgPool2d`` module (zennit's ``Norm``, relgraph's
  ε on ReduceMean / GlobalAveragePool);
- a gate (squeeze-excitation: ``scale * x``) passes all relevance to the signal and none to the gate,
  relgraph's ``gate`` rule: ``x + (scale * x − x).detach()`` has the forward value ``scale * x`` and the
  identity as its gradient towards ``x``;
- DenseNet's final functional ReLU becomes a module (zennit's ``Pass``);
- Inception-v3's pooling branches (``F.avg_pool2d`` inside the blocks) pool through an ``AvgPool2d`` module.

BatchNorm that follows a convolution is merged by zennit's ``SequentialMergeBatchNorm`` (relgraph folds it
the same way), made exact by :class:`ExactMergeBatchNorm`; DenseNet's pre-activation BatchNorm stays a layer
of its own and takes ε in both.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import inception
from torchvision.models.densenet import DenseNet
from torchvision.models.efficientnet import FusedMBConv, MBConv
from torchvision.models.mnasnet import MNASNet, _InvertedResidual
from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.shufflenetv2 import ShuffleNetV2
from torchvision.ops.misc import SqueezeExcitation
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.layer import Sum


def _residual(self, a, b):
    return self.canonizer_sum(torch.stack([a, b], dim=-1))


def _regnet_block(self, x):
    return self.activation(_residual(self, self.proj(x) if self.proj is not None else x, self.f(x)))


def _mobilenet_v2_block(self, x):
    return _residual(self, x, self.conv(x)) if self.use_res_connect else self.conv(x)


def _mobilenet_v3_block(self, x):  # EfficientNet's MBConv and FusedMBConv too (stochastic depth: eval)
    y = self.block(x)
    return _residual(self, y, x) if self.use_res_connect else y


def _mnasnet_block(self, x):
    return _residual(self, self.layers(x), x) if self.apply_residual else self.layers(x)


def _squeeze_excitation(self, x):
    return x + (self._scale(x) * x - x).detach()


def _pooled_head(features, classifier):
    def forward(self, x):
        return getattr(self, classifier)(torch.flatten(self.canonizer_pool(getattr(self, features)(x)), 1))
    return forward


def _shufflenet(self, x):
    x = self.maxpool(self.conv1(x))
    x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
    return self.fc(torch.flatten(self.canonizer_pool(x), 1))


def _densenet(self, x):
    return self.classifier(torch.flatten(self.canonizer_pool(self.canonizer_relu(self.features(x))), 1))


class _PoolThroughModule:
    """``torch.nn.functional`` with ``avg_pool2d`` replaced by a module call (the block's 3×3/1/1 pool)."""

    def __init__(self, pool):
        self.pool = pool

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def avg_pool2d(self, x, kernel_size, stride, padding):
        return self.pool(x)


def _inception_block(self, x):
    functional, inception.F = inception.F, _PoolThroughModule(self.canonizer_pool)
    try:
        return torch.cat(self._forward(x), 1)
    finally:
        inception.F = functional


def _sum_module():
    return {"canonizer_sum": Sum()}


def _pool_module():
    return {"canonizer_pool": nn.AdaptiveAvgPool2d(1)}


# module class → (new forward, the modules it needs)
FORWARDS = {
    ResBottleneckBlock: (_regnet_block, _sum_module),
    InvertedResidualV2: (_mobilenet_v2_block, _sum_module),
    InvertedResidualV3: (_mobilenet_v3_block, _sum_module),
    MBConv: (_mobilenet_v3_block, _sum_module),
    FusedMBConv: (_mobilenet_v3_block, _sum_module),
    _InvertedResidual: (_mnasnet_block, _sum_module),
    SqueezeExcitation: (_squeeze_excitation, dict),
    MobileNetV2: (_pooled_head("features", "classifier"), _pool_module),
    MNASNet: (_pooled_head("layers", "classifier"), _pool_module),
    ShuffleNetV2: (_shufflenet, _pool_module),
    DenseNet: (_densenet, lambda: {**_pool_module(), "canonizer_relu": nn.ReLU()}),
    **{block: (_inception_block, lambda: {"canonizer_pool": nn.AvgPool2d(3, 1, 1)})
       for block in (inception.InceptionA, inception.InceptionC, inception.InceptionE)},
}


class TorchvisionModuleCanonizer(AttributeCanonizer):
    """Overload ``forward`` of the torchvision modules in :data:`FORWARDS` with a module-only version."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name, module):
        for cls, (forward, modules) in FORWARDS.items():
            if type(module) is cls:
                return {"forward": forward.__get__(module), **modules()}
        return None


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's merge, with the emptied BatchNorm an exact identity.

    zennit folds y = γ (z − μ)/√(σ² + ε) + β into the convolution and leaves the BatchNorm in place with
    μ = 0, σ² = 1, γ = 1, β = 0, but keeps its ε: the module then computes z/√(1 + ε), not z. With torch's
    default ε = 1e-5 that is 5e-6 per layer, invisible; the BatchNorms of MobileNetV3, GoogLeNet and Inception-v3
    take ε = 1e-3, which shrinks each merged layer's output by 5e-4 against its folded bias and the next layer's
    bias. The ε rule's share of the biases shifts with it: 0.4–1.5 % relative L2 against relgraph, whose fold is
    exact. Setting σ² = 1 − ε makes √(σ² + ε) = 1; ``remove`` restores σ² with the other statistics.
    """

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)


def canonizer(merge_batchnorm: bool = True):
    """BatchNorm merging (where a convolution precedes it) plus the module canonizer above."""
    parts = (ExactMergeBatchNorm(),) if merge_batchnorm else ()
    return CompositeCanonizer(parts + (TorchvisionModuleCanonizer(),))


"""The networks of the research log, as plain ``torch.nn.Module`` classes.

Every model takes its input exactly as :func:`rebel.data.load_dataset` gives it and returns
logits of shape ``(N, num_classes)``:

==================  ================  ===================================
name in MODELS      input             parameters (with default arguments)
==================  ================  ===================================
``"MnistCNN"``      (N, 1, 28, 28)    1,199,882 (log v1: ~1.2M)
``"TinyCNN"``       (N, 1, 28, 28)    74,286 (log v2/v3: 75K)
``"Cifar10CNN"``    (N, 3, 32, 32)    583,514 (log v4: ~582K)
``"Mnist1DNet"``    (N, 1, 40)        9,610 (not in the log)
==================  ================  ===================================

Registry names are the class names, as the run configs and the book spell them.

The log gives only the parameter counts of TinyCNN and CIFAR10CNN, not their layers; the
layers here are our own choice, sized to land within 1 % of those counts.

Where a ReLU meets a 2x2 max-pool, the pool comes first: ReLU is monotone, so max-pooling
commutes with it, and pool-then-ReLU gives exactly the values and the gradients of
ReLU-then-pool (a test checks this bit for bit) with a quarter of the ReLU work. The layers'
indices, and so the ``state_dict`` keys, are those of the ReLU-then-pool order.

The image models use only convolutions, ReLU, max-pooling, dropout and linear layers, so they
accept ``channels_last`` input on CPU and GPU and give the same logits as for contiguous input
(up to float rounding). Weights are drawn from torch's global RNG by the default initialisers,
so ``torch.manual_seed(s)`` before construction makes a model reproducible.

Example::

    model = build_model("TinyCNN")
    logits = model(dataset.train_x[:32])  # (32, 10)
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MODELS", "Cifar10CNN", "Mnist1DNet", "MnistCNN", "TinyCNN", "build_model"]


class MnistCNN(nn.Module):
    """The classic pytorch/examples MNIST network (log v1), for (N, 1, 28, 28) input.

    Two unpadded 3x3 convolutions (32 and 64 channels), one 2x2 max-pool, dropout 0.25, a
    9216 -> 128 hidden layer, dropout 0.5, and a linear classifier. 1,199,882 parameters.
    """

    num_parameters = 1_199_882

    def __init__(self, *, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3),  # 28 -> 26
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),  # 26 -> 24
            nn.MaxPool2d(2),  # 24 -> 12; pooling before ReLU, see the module docstring
            nn.ReLU(),
            nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class TinyCNN(nn.Module):
    """A small CNN for (N, 1, 28, 28) input (log v2/v3: "TinyCNN (75K params)"). 74,286 params.

    Two padded 3x3 convolutions (16 and 32 channels), each followed by ReLU and a 2x2 max-pool,
    dropout 0.25, a 1568 -> 44 hidden layer, dropout 0.5, and a linear classifier. Almost all
    parameters sit in the hidden layer; its width 44 is what brings the total to the log's 75K.
    The log's train accuracy (measured with dropout on) stays below its test accuracy, which
    suggests the original had dropout too.
    """

    num_parameters = 74_286

    def __init__(self, *, num_classes: int = 10, hidden: int = 44) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.MaxPool2d(2),  # 14 -> 7
            nn.ReLU(),
            nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _conv_block(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """Two padded 3x3 convolutions with ReLU, a 2x2 max-pool (halves H and W), then dropout."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Dropout(dropout),
    )


class Cifar10CNN(nn.Module):
    """A VGG-style CNN for (N, 3, 32, 32) input (log v4: "CIFAR10CNN (~582K params)").

    Three blocks of conv-conv-pool with 32, 64 and 128 channels (32 -> 16 -> 8 -> 4), each
    followed by dropout 0.25, then a 2048 -> 144 hidden layer, dropout 0.5, and a linear
    classifier. 583,514 parameters: 287,008 in the convolutions, 296,506 in the head.
    """

    num_parameters = 583_514

    def __init__(self, *, num_classes: int = 10, hidden: int = 144) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(3, 32, dropout=0.25),
            _conv_block(32, 64, dropout=0.25),
            _conv_block(64, 128, dropout=0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class Mnist1DNet(nn.Module):
    """A small 1-D CNN for MNIST-1D signals of shape (N, 1, 40). 9,610 parameters.

    Three 1-D convolutions with 32 channels (the last two with stride 2: 40 -> 20 -> 10) and
    ReLU, then a linear classifier on the flattened 32 x 10 features. Not in the research log;
    it is the small, fast-to-train model for checking the optimizer on a problem that a CPU
    solves in seconds. Convolutions matter here: MNIST-1D's digits are shifted along the
    signal, and the dataset's authors report ~90+ % test accuracy for CNNs against ~60-70 %
    for MLPs.
    """

    num_parameters = 9_610

    def __init__(self, *, num_classes: int = 10, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),  # 40 -> 20
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),  # 20 -> 10
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * 10, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        # Conv1d also accepts an unbatched (C, L) tensor, so a (N, 40) batch would be misread
        # as N channels instead of failing; catch that here with a message that says why.
        if x.dim() != 3 or x.shape[1:] != (1, 40):
            raise ValueError(
                f"Mnist1DNet expects input of shape (N, 1, 40), got {tuple(x.shape)}; "
                "load_dataset('mnist1d') gives that shape, or use x.unsqueeze(1) on (N, 40)."
            )
        return self.classifier(self.features(x))


MODELS: dict[str, type[nn.Module]] = {
    model_class.__name__: model_class
    for model_class in (MnistCNN, TinyCNN, Cifar10CNN, Mnist1DNet)
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Construct the model registered as ``name`` in :data:`MODELS`, passing ``kwargs`` on.

    Call ``torch.manual_seed`` first for reproducible weights.

    Raises:
        ValueError: if ``name`` is not a registered model.
    """
    try:
        model_class = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names are: {', '.join(sorted(MODELS))}"
        ) from None
    return model_class(**kwargs)

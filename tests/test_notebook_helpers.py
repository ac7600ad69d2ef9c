"""segutils.notebook: the chapters' shared measurement and display helpers, against independent references."""

import base64
import io
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from scipy import ndimage
from torch import nn

from segutils.notebook import (
    add_to_class,
    connected_components,
    flops,
    html_table,
    module_flops,
    output_shapes,
    peak_forward_bytes,
    png_base64,
    sample_photograph,
    seconds,
    show,
    training_cost,
)


def test_seconds_is_at_least_the_sleep_it_times():
    # A lower bound only: sleeping 20 ms cannot take less, however loaded the machine is.
    assert seconds(lambda: time.sleep(0.02), min_run_time=0.1) >= 0.02


def test_seconds_rejects_what_it_cannot_time():
    with pytest.raises(TypeError, match="callable"):
        seconds(3)
    with pytest.raises(ValueError, match="min_run_time"):
        seconds(lambda: None, min_run_time=0)


def test_flops_counts_two_per_multiply_add_of_a_convolution():
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    x = torch.rand(2, 3, 8, 10)
    assert flops(lambda: conv(x)) == 2 * (2 * 8 * 10) * 5 * (3 * 3 * 3)  # outputs x taps per output
    assert flops(lambda: x + 1) == 0  # elementwise work is not counted


def test_module_flops_splits_the_total_by_submodule():
    # Two convolutions, the second inside a nested block, counted by hand: outputs x taps x 2.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 6, 1), nn.ReLU()))
    x = torch.rand(2, 3, 5, 7)
    first, second = 2 * (2 * 5 * 7) * 4 * (3 * 3 * 3), 2 * (2 * 5 * 7) * 6 * 4
    counts = module_flops(model, x)
    assert counts == {"0": first, "2": second, "2.0": second, "": first + second}
    on_meta = module_flops(model.to("meta"), x.to("meta"))
    assert on_meta == counts
    with pytest.raises(TypeError, match="nn.Module"):
        module_flops(lambda t: t, x)


def test_module_flops_counts_every_call_of_a_shared_module():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)

        def forward(self, x):
            return self.conv(self.conv(x))

    x = torch.rand(1, 2, 3, 3)
    once = 2 * 9 * 2 * 2
    assert module_flops(Twice(), x) == {"conv": 2 * once, "": 2 * once}


def test_output_shapes_follow_the_layers_and_remove_their_hooks():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(2), nn.Sequential(nn.Conv2d(8, 5, 1)))
    shapes = output_shapes(model, torch.rand(2, 3, 11, 13))
    # By the output-size formula: 11 - 3 + 1 = 9 rows, 13 - 3 + 1 = 11 columns; pooling floors the halves.
    assert shapes == {"0": (8, 9, 11), "1": (8, 4, 5), "2": (5, 4, 5), "2.0": (5, 4, 5)}
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        output_shapes(model, torch.rand(2, 4, 11, 13))  # wrong channels: the hooks go all the same
    assert all(not m._forward_hooks for m in model.modules())


def test_training_cost_counts_the_tensors_autograd_keeps():
    x = torch.rand(2, 3, 4, 6)
    y = torch.randint(0, 5, (2, 4, 6))
    conv = nn.Conv2d(3, 5, 1, bias=False)
    # The convolution keeps its input; cross-entropy keeps its log-probabilities, the int64 targets and the
    # float32 scalar total weight of nll_loss. The weight is not counted.
    by_hand = x.numel() * 4 + 2 * 5 * 4 * 6 * 4 + y.numel() * 8 + 4
    saved, ops = training_cost(conv, x, y)
    assert saved == by_hand
    with_relu, _ = training_cost(nn.Sequential(nn.Conv2d(3, 5, 1, bias=False), nn.ReLU()), x, y)
    assert with_relu == by_hand + 2 * 5 * 4 * 6 * 4  # plus the ReLU's output
    forward = 2 * (2 * 4 * 6) * 5 * 3
    assert ops == 2 * forward  # backward: gradient of the weight only (x needs none)
    assert conv.weight.grad is None
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        training_cost(conv, x, y[0])


def test_peak_forward_bytes_sees_two_maps_alive_at_once():
    x = torch.rand(2, 3, 4, 6)
    one_map = 2 * 5 * 4 * 6 * 4
    assert peak_forward_bytes(nn.Conv2d(3, 5, 1), x) == one_map
    # ReLU out of place: the convolution's output and the ReLU's output coexist.
    assert peak_forward_bytes(nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU()), x) == 2 * one_map
    assert peak_forward_bytes(nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU(inplace=True)), x) == one_map


def test_connected_components_agrees_with_scipy():
    torch.manual_seed(0)
    region = torch.rand(3, 20, 25) < 0.45
    ids = connected_components(region)
    eight = ndimage.generate_binary_structure(2, 2)
    for i in range(3):
        reference, count = ndimage.label(region[i].numpy(), structure=eight)
        ours = ids[i]
        assert ((ours > 0) == region[i]).all()
        assert len(ours.unique()) - 1 == count > 1
        pairs = {(a, b) for a, b in zip(ours.flatten().tolist(), reference.flatten().tolist())}
        assert len(pairs) == count + 1  # one-to-one between our ids and scipy's labels (and 0)
    with pytest.raises(ValueError, match="bool"):
        connected_components(region.float())


def test_png_base64_is_a_png_of_the_figure_size():
    fig = plt.figure(figsize=(2, 1))
    data = base64.b64decode(png_base64(fig, dpi=50))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.imread(io.BytesIO(data)).shape[:2] == (50, 100)
    assert not plt.fignum_exists(fig.number)
    tight = plt.figure(figsize=(2, 1))
    tight.text(0.5, 0.5, "x")
    data = base64.b64decode(png_base64(tight, dpi=50, bbox_inches="tight"))
    height, width = plt.imread(io.BytesIO(data)).shape[:2]
    assert height < 50 and width < 100  # cropped to the text


def test_show_puts_channels_last_and_clamps():
    fig, ax = plt.subplots()
    show(ax, torch.tensor([[[2.0]], [[0.5]], [[-1.0]]]), "t")
    assert ax.images[0].get_array().tolist() == [[[1.0, 0.5, 0.0]]]
    assert ax.get_title() == "t" and list(ax.get_xticks()) == []
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        show(ax, torch.zeros(1, 1, 1, 1))
    plt.close(fig)


def test_html_table_escapes_and_checks_widths():
    table = html_table(["a", "b"], [(1, "<x>")]).data
    assert table == "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>&lt;x&gt;</td></tr></table>"
    with pytest.raises(ValueError, match="2 columns"):
        html_table(["a", "b"], [(1,)])


def test_sample_photograph_is_the_face_crop_averaged_down():
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        raw = plt.imread(file)  # (600, 512, 3) uint8
    full, photo = sample_photograph(4)
    assert full.shape == (3, 600, 512) and photo.shape == (1, 3, 96, 96)
    assert 0 <= photo.min() and photo.max() <= 1
    # Pixel (row 5, column 7) of the crop: the mean of the 4 x 4 block at rows 16 + 20.., columns 64 + 28..
    block = raw[16 + 20 : 16 + 24, 64 + 28 : 64 + 32].astype("float64") / 255
    assert torch.allclose(photo[0, :, 5, 7].double(), torch.from_numpy(block.mean(axis=(0, 1))), atol=1e-6)


def test_add_to_class_gives_the_class_a_method_its_instances_already_made_can_call():
    class Doubler(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(2.0))

    made_before = Doubler()
    with pytest.raises(NotImplementedError):  # nn.Module without a forward
        made_before(torch.ones(3))

    @add_to_class(Doubler)
    def forward(self, x):
        return self.scale * x

    assert forward.__name__ == "forward"  # the function itself is returned
    assert torch.equal(made_before(torch.ones(3)), torch.full((3,), 2.0))
    assert torch.equal(Doubler()(torch.arange(3.0)), torch.tensor([0.0, 2.0, 4.0]))


def test_add_to_class_names_what_it_cannot_attach_to():
    with pytest.raises(TypeError, match="expects a class"):
        add_to_class(nn.Linear(1, 1))
    with pytest.raises(TypeError, match="named function"):
        add_to_class(nn.Module)(3)

import math

import pytest
import torch
import torch.nn.functional as F

from hw4.models.unet import (
    AttentionBlock,
    MultiHeadAttention,
    UNet,
    UNetConfig,
    sinusoidal_embedding,
)


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
def test_scratch_mha_matches_sdpa(heads):
    torch.manual_seed(heads)
    mha = MultiHeadAttention(32, heads)
    x = torch.randn(3, 10, 32)
    b, n, c = x.shape
    q, k, v = (p(x).view(b, n, heads, c // heads).transpose(1, 2) for p in (mha.q, mha.k, mha.v))
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    torch.testing.assert_close(mha(x), mha.out(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads", [1, 4])
def test_scratch_mha_matches_torch_multihead_attention(heads):
    """Same weights copied into nn.MultiheadAttention give the same output."""
    mha = MultiHeadAttention(16, heads)
    ref = torch.nn.MultiheadAttention(16, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.q.weight, mha.k.weight, mha.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([mha.q.bias, mha.k.bias, mha.v.bias]))
        ref.out_proj.weight.copy_(mha.out.weight)
        ref.out_proj.bias.copy_(mha.out.bias)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(mha(x), ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_mha_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def test_attention_block_mixes_positions():
    """Changing one pixel changes the output at other pixels (it really attends)."""
    blk = AttentionBlock(8, 2, groups=4).eval()
    x = torch.randn(1, 8, 5, 5)
    y = x.clone()
    y[0, :, 0, 0] += 1.0
    diff = (blk(x) - blk(y)).abs()[0, :, 4, 4].sum()
    assert diff > 1e-4


def test_time_embedding_known_values():
    t = torch.tensor([0, 1, 100])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = [10000 ** (-i / 4) for i in range(4)]
    expected = [math.sin(100 * f) for f in freqs] + [math.cos(100 * f) for f in freqs]
    torch.testing.assert_close(emb[2], torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert emb[1, 0] == pytest.approx(math.sin(1.0), abs=1e-6)
    assert sinusoidal_embedding(t, 7).shape == (3, 7)


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("mults,attn", [((1, 2, 2), (4,)), ((1, 2), (1, 2)), ((1, 1, 2, 2), ())])
def test_unet_output_shape(size, mults, attn):
    cfg = UNetConfig(base_channels=16, channel_mults=mults, attention_resolutions=attn,
                     num_heads=2, groups=4)
    model = UNet(cfg)
    x = torch.randn(2, 1, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_unet_uses_time():
    model = UNet(UNetConfig(base_channels=16, groups=4, num_heads=2)).eval()
    x = torch.randn(1, 1, 28, 28)
    assert (model(x, torch.tensor([1])) - model(x, torch.tensor([500]))).abs().max() > 1e-4


def test_resnet_block_projects_residual_only_when_channels_change():
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), groups=4, num_heads=2))
    blocks = [model.down[0].res[0], model.down[1].res[0]]
    assert isinstance(blocks[0].skip, torch.nn.Identity)
    assert isinstance(blocks[1].skip, torch.nn.Conv2d) and blocks[1].skip.kernel_size == (1, 1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_paths_keep_the_float64_answer_and_the_callers_layout(channels_last):
    """Channels-last activations and the fused q/k/v matmul change speed, not results: the
    float32 forward matches the same network run in float64 (NCHW), and the output comes back
    in the caller's contiguous NCHW layout."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), attention_resolutions=(1, 2),
                            num_heads=4, groups=4)).eval()
    model.channels_last = channels_last
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 400, 999])
    with torch.no_grad():
        fast = model(x, t)
        model.channels_last = False
        exact = model.double()(x.double(), t)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast.double(), exact, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_layout_asked_for_is_the_layout_the_convolutions_see(channels_last):
    """A one-channel image is NCHW and NHWC at once, so converting the input changes nothing:
    the ResNet blocks' convolutions must see NHWC activations exactly when asked."""
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,),
                            num_heads=2, groups=4))
    model.channels_last = channels_last
    seen = []
    for level in [*model.down, *model.up]:
        for block in level.res:
            block.block1[2].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    assert len(seen) == 6  # one block per level down, two up
    for h in seen:  # (B, C > 1, H, W): the two layouts are told apart
        assert h.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert h.is_contiguous() != channels_last

"""The bidirectional GRU of the context encoder over packed rows (stacked_bidirectional_gru), with
nn.GRU's weights and maths: on cpu its recurrence is one autograd Function (GRURecurrence) whose
backward computes the recurrent weight gradient in one matmul over all steps; on cuda each layer is
cuDNN's single-layer GRU. Between layers, torch's dropout on every device, so every mask comes from
torch's generator (a resumed run repeats it). MALN_model_fix.ContextEncoder is its one user."""

import warnings

import torch
import torch.nn.functional as F


class GRURecurrence(torch.autograd.Function):
    """The recurrent half of a bidirectional GRU layer, both directions at once, over packed rows.

    Step t owns the packed rows start_t : start_t + batch_sizes[t]; the second direction's rows
    come in reversed time (see reversed_rows), so both directions run forward. Same maths as
    nn.GRU (gates r, z, n); backward computes the recurrent weight gradient in one matmul over
    all steps, where autograd through per-step cells would accumulate one matmul per step.
    """

    @staticmethod
    def forward(ctx, gates_input, weight_hh, bias_hh, batch_sizes):
        # gates_input (2, n, 3G) = W_ih x + b_ih per row; weight_hh (2, 3G, G); bias_hh (2, 3G); batch_sizes list
        _, n, G3 = gates_input.shape
        G = G3 // 3
        hidden = gates_input.new_empty(2, n, G)
        reset_update = gates_input.new_empty(2, n, 2 * G)
        new, hidden_new = gates_input.new_empty(2, n, G), gates_input.new_empty(2, n, G)
        weight, bias = weight_hh.transpose(1, 2), bias_hh.unsqueeze(1)                   # (2, G, 3G), (2, 1, 3G)
        h_prev, start = gates_input.new_zeros(2, batch_sizes[0], G), 0
        for b in batch_sizes:
            rows = slice(start, start + b)
            h_prev = h_prev[:, :b]                                                          # (2, b, G)
            gh = torch.baddbmm(bias, h_prev, weight)                                        # (2, b, 3G)
            gi = gates_input[:, rows]
            rz = torch.sigmoid(gi[..., :2 * G] + gh[..., :2 * G])                           # (2, b, 2G)
            n_t = torch.tanh(torch.addcmul(gi[..., 2 * G:], rz[..., :G], gh[..., 2 * G:]))  # (2, b, G)
            hidden[:, rows] = torch.addcmul(n_t, rz[..., G:], h_prev - n_t)                 # h = (1 - z) n + z h_prev
            reset_update[:, rows], new[:, rows], hidden_new[:, rows] = rz, n_t, gh[..., 2 * G:]
            h_prev, start = hidden[:, rows], start + b
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(weight_hh, hidden, reset_update, new, hidden_new)
        return hidden                                                                       # (2, n, G)

    @staticmethod
    def backward(ctx, grad_hidden):
        weight_hh, hidden, reset_update, new, hidden_new = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        _, n, G = hidden.shape
        starts = [0] + torch.tensor(batch_sizes).cumsum(0).tolist()[:-1]
        grad_gh = hidden.new_empty(2, n, 3 * G)                                             # gradient of W_hh h + b_hh
        grad_new_input = hidden.new_empty(2, n, G)                                          # gradient of the n gate's input
        carry = None                                                                        # gradient reaching h_{t} from step t+1
        for t in reversed(range(len(batch_sizes))):
            b, rows = batch_sizes[t], slice(starts[t], starts[t] + batch_sizes[t])
            dh = grad_hidden[:, rows]
            if carry is not None:
                dh = torch.cat([dh[:, :carry.size(1)] + carry, dh[:, carry.size(1):]], 1)  # (2, b, G)
            h_prev = hidden[:, starts[t - 1]:starts[t - 1] + b] if t > 0 else hidden.new_zeros(2, b, G)
            r, z, n_t = reset_update[:, rows, :G], reset_update[:, rows, G:], new[:, rows]
            d_new = dh * (1 - z) * (1 - n_t * n_t)                                          # through tanh
            d_reset = d_new * hidden_new[:, rows] * r * (1 - r)                             # through sigmoid
            d_update = dh * (h_prev - n_t) * z * (1 - z)
            grad_gh[:, rows] = torch.cat([d_reset, d_update, d_new * r], -1)
            grad_new_input[:, rows] = d_new
            carry = torch.baddbmm(dh * z, grad_gh[:, rows], weight_hh)                      # (2, b, G)
        previous = torch.cat([hidden.new_zeros(2, batch_sizes[0], G)]
                             + [hidden[:, starts[t - 1]:starts[t - 1] + batch_sizes[t]] for t in range(1, len(batch_sizes))], 1)
        grad_weight = grad_gh.transpose(1, 2) @ previous                                    # (2, 3G, G), one matmul
        grad_input = torch.cat([grad_gh[..., :2 * G], grad_new_input], -1)                  # (2, n, 3G)
        return grad_input, grad_weight, grad_gh.sum(1), None


def reversed_rows(batch_sizes):
    """Permutation of packed rows that reverses every sequence within its own length (its own inverse)."""
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes                                   # (T,)
    step = torch.repeat_interleave(torch.arange(len(batch_sizes)), batch_sizes)            # (n,)
    sequence = torch.arange(len(step)) - offsets[step]                                     # (n,)
    lengths = (batch_sizes.unsqueeze(0) > torch.arange(int(batch_sizes[0])).unsqueeze(1)).sum(1)  # (B,)
    return offsets[lengths[sequence] - 1 - step] + sequence


def stacked_bidirectional_gru(gru, data, batch_sizes):
    """A stacked bidirectional nn.GRU over packed rows with its own weights, one layer at a time:
    cuDNN's single-layer GRU on cuda, bidirectional_gru_layer on cpu, and between the layers torch's
    dropout on every device. nn.GRU's own inter-layer dropout on cuda draws from a state cuDNN keeps
    per process, outside torch's generator, so a resumed run could not repeat it; here every mask
    comes from torch's generator, whose state last.pt holds. data (n, I), batch_sizes (T,) cpu -> (n, 2G)."""
    reverse = reversed_rows(batch_sizes).to(data.device) if not data.is_cuda else None
    for layer in range(gru.num_layers):
        weights = [getattr(gru, f"{name}_l{layer}{suffix}") for suffix in ("", "_reverse")
                   for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")]
        if data.is_cuda:
            data = cudnn_bidirectional_gru_layer(weights, data, batch_sizes, gru.training)
        else:
            data = bidirectional_gru_layer(weights, data, batch_sizes, reverse)
        if layer < gru.num_layers - 1:
            data = F.dropout(data, gru.dropout, gru.training)
    return data


def bidirectional_gru_layer(weights, data, batch_sizes, reverse):
    """One bidirectional GRU layer over packed rows, for cpu: input matmuls over all rows at once,
    then GRURecurrence. weights: w_ih, b_ih, w_hh, b_hh, then the same of the reverse direction;
    reverse = reversed_rows(batch_sizes). data (n, I) -> (n, 2G)."""
    gates = torch.stack([F.linear(data, weights[0], weights[1]),                                      # (2, n, 3G), the second
                         F.linear(data[reverse], weights[4], weights[5])])                            # direction in reversed time
    hidden = GRURecurrence.apply(gates, torch.stack([weights[2], weights[6]]), torch.stack([weights[3], weights[7]]),
                                 batch_sizes.tolist())
    in_order, reversed_hidden = hidden.unbind(0)                                                      # (n, G) each
    return torch.cat([in_order, reversed_hidden[reverse]], -1)                                        # (n, 2G)


def cudnn_bidirectional_gru_layer(weights, data, batch_sizes, training):
    """One bidirectional GRU layer over packed rows with cuDNN (the kernel nn.GRU calls), no dropout
    inside it. weights as bidirectional_gru_layer's. data (n, I) -> (n, 2G)."""
    w_ih, b_ih, w_hh, b_hh, *reverse = weights
    flat = [w_ih, w_hh, b_ih, b_hh, reverse[0], reverse[2], reverse[1], reverse[3]]                 # nn.GRU's order
    hidden = data.new_zeros(2, int(batch_sizes[0]), w_hh.size(1))                                     # (2, B, G)
    with warnings.catch_warnings():  # a layer's weights are a slice of nn.GRU's flat buffer: cuDNN copies them, and says so
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        return torch._VF.gru(data, batch_sizes, hidden, flat, True, 1, 0.0, training, True)[0]       # (n, 2G)

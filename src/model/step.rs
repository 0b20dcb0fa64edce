//! One step, top to bottom: the dispatch list of a training or evaluation step, planned once
//! per batch size and recorded every step. Every list reads the step uniform, so one plan
//! serves every step of its size.

use crate::error::{Result, VaeError};
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::model::block::{rows, Ctx};
use crate::model::inputs::Inputs;
use crate::model::workspace::Workspace;
use crate::model::Vae;
use crate::ops::{self, AdamConfig, StepBuffer};

/// What the plans of one workspace share.
fn context<'a>(gpu: &'a Gpu, vae: &'a Vae, ws: &'a Workspace, b: usize, step: &'a StepBuffer) -> Result<Ctx<'a>> {
    if b == 0 || b > ws.batch {
        return Err(VaeError::Config(format!(
            "a plan for {b} examples in a workspace of {}",
            ws.batch
        )));
    }
    Ok(Ctx {
        gpu,
        arena: &vae.arena,
        step,
        terms: &ws.terms,
        b,
        samples: ws.samples,
        weights: ws.objective.weights(b, ws.samples),
    })
}

/// Plans the inputs and the encoder for `b` examples: the batch into `ws.inputs.x`, the
/// encoder's output into `ws.enc` (not its penalties, which only a step's loss needs). Returns
/// the dispatches and the encoder's input.
pub fn plan_encode(
    gpu: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    b: usize,
    inputs: &Inputs<'_>,
    step: &StepBuffer,
) -> Result<(Vec<Dispatch>, Tensor)> {
    let c = context(gpu, vae, ws, b, step)?;
    let (mut d, x_enc) = inputs.forward(&c, &ws.inputs, &ws.labelled, &ws.enc_labelled)?;
    d.extend(ws.encoder.forward(&c, &x_enc, &rows(&ws.enc, b))?);
    Ok((d, x_enc))
}

/// Plans the decoder for `b` examples' draws: the first L·b rows of `ws.z` into `ws.out`.
pub fn plan_decode(gpu: &Gpu, vae: &Vae, ws: &Workspace, b: usize, step: &StepBuffer) -> Result<Vec<Dispatch>> {
    let c = context(gpu, vae, ws, b, step)?;
    let r = c.draws();
    ws.decoder.forward(&c, &rows(&ws.z, r), &rows(&ws.out, r))
}

/// Plans a reconstruction of `b` examples: inputs → encoder → latent → decoder, the decoder's
/// output in `ws.out` (no likelihood, no metrics).
pub fn plan_reconstruct(
    gpu: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    b: usize,
    inputs: &Inputs<'_>,
    step: &StepBuffer,
) -> Result<Vec<Dispatch>> {
    let c = context(gpu, vae, ws, b, step)?;
    let (mut d, _) = plan_encode(gpu, vae, ws, b, inputs, step)?;
    d.extend(ws.latent.forward(&c, &rows(&ws.enc, b), &rows(&ws.z, c.draws()))?);
    d.extend(plan_decode(gpu, vae, ws, b, step)?);
    Ok(d)
}

/// Plans one step for `b` examples (b ≤ ws.batch): inputs → encoder → latent → decoder →
/// likelihood → objective and the metric row; with `adam`, the backward pass in reverse and
/// the optimizer over the whole arena.
#[allow(clippy::too_many_arguments)]
pub fn plan_step(
    gpu: &Gpu,
    vae: &Vae,
    ws: &Workspace,
    b: usize,
    inputs: &Inputs<'_>,
    step: &StepBuffer,
    metric_log: &Tensor,
    adam: Option<&AdamConfig>,
) -> Result<Vec<Dispatch>> {
    let c = context(gpu, vae, ws, b, step)?;
    let r = c.draws();
    let (x, enc, z) = (rows(&ws.inputs.x, b), rows(&ws.enc, b), rows(&ws.z, r));
    let (out, d_out) = (rows(&ws.out, r), rows(&ws.d_out, r));
    let train = adam.is_some();
    let grads = match (&ws.grads, train) {
        (Some(g), true) => Some((rows(&g.dz, r), rows(&g.denc, b))),
        (None, true) => {
            return Err(VaeError::Config(
                "plan_step: a training step (adam given) needs a workspace made for training".into(),
            ))
        }
        (_, false) => None,
    };

    // Forward.
    let (mut d, x_enc) = plan_encode(gpu, vae, ws, b, inputs, step)?;
    d.extend(ws.latent.forward(&c, &enc, &z)?);
    d.extend(ws.encoder.penalties(&c)?);
    d.extend(ws.decoder.forward(&c, &z, &out)?);
    let weight = ws.objective.draw_weight(ws.samples);
    d.extend(ws.likelihood.forward(&c, &out, &x, &d_out, weight, train)?);
    d.extend(ws.objective.forward(&c)?);

    // Backward, each block's penalties with it.
    if let Some((dz, denc)) = &grads {
        d.extend(ws.likelihood.backward(&c, &d_out)?);
        d.extend(ws.decoder.backward(&c, &z, &d_out, Some(dz))?);
        d.extend(ws.latent.backward(&c, &enc, &z, dz, denc)?);
        d.extend(ws.encoder.backward(&c, &x_enc, denc, None)?);
    }

    // This step's metric row, then the optimizer (the weights' texture mirrors follow it).
    d.push(ws.objective.metrics(&c, metric_log)?);
    if let Some(adam) = adam {
        let a = &vae.arena;
        d.push(ops::adam(
            gpu, "adam", adam, step, &a.params, &a.grads, &a.m, &a.v, &a.health,
        )?);
        d.extend(a.refresh_mirrors());
    }
    Ok(d)
}

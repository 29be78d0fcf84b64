-- Model registry schema for hpc-launch (python -m hpc.registry). PostgreSQL 15 / Supabase.
--
-- Create the database once, e.g. in Supabase's SQL editor, or:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f hpc/registry_schema.sql
-- Re-running it is safe: it only creates what is missing.
--
-- Every table has a UNIQUE `name`: the registry writes with one upsert per row
-- (PostgREST `on_conflict=name`, i.e. INSERT ... ON CONFLICT (name) DO UPDATE) that sets only the
-- columns it was given; anything else in an existing row (descriptions, hashes, hand-made edits) stays.
-- `created_at` is set on insert, `updated_at` by a trigger whenever a row really changes.

create or replace function registry_touch_updated_at() returns trigger
language plpgsql as $$
begin
  if new is distinct from old then  -- an upsert that changes nothing keeps the row as it was
    new.updated_at := now();
  end if;
  return new;
end $$;

-- Agents (harnesses) whose traces a model was trained on. The registry only ever sends `name`.
create table if not exists agents (
  id          uuid primary key default gen_random_uuid(),
  name        text not null unique,          -- e.g. "terminus-2"
  description text,                          -- free text, never overwritten by the registry
  hash        text,                          -- version/commit of the agent, never overwritten by the registry
  created_at  timestamptz not null default now(),
  updated_at  timestamptz not null default now()
);

-- Datasets models were trained on. Rows are created by name only; nothing is downloaded to count rows.
create table if not exists datasets (
  id          uuid primary key default gen_random_uuid(),
  name        text not null unique,          -- Hub id ("org/name") or LLaMA-Factory dataset name
  num_rows    bigint,                        -- optional, filled by whoever knows it
  description text,
  created_at  timestamptz not null default now(),
  updated_at  timestamptz not null default now()
);

-- Base (pre-trained) models that training started from.
create table if not exists base_models (
  id          uuid primary key default gen_random_uuid(),
  name        text not null unique,          -- Hub id, e.g. "Qwen/Qwen3-8B", or a path
  description text,
  created_at  timestamptz not null default now(),
  updated_at  timestamptz not null default now()
);

-- Trained models: one row per unique name.
create table if not exists models (
  id                  uuid primary key default gen_random_uuid(),
  name                text not null unique,  -- Hub id of the trained model (hub_model_id), else the run's name
  created_by          text,                  -- user or org that trained it
  creation_location   text,                  -- cluster (SLURM ClusterName)
  weights_location    text,                  -- where the weights are: output dir, consolidated dir or hf://org/name
  training_type       text check (training_type in ('SFT', 'RL')),
  training_status     text,                  -- W&B run state (finished, crashed, ...) or "finished" from a run summary
  training_start      timestamptz,
  training_end        timestamptz,
  training_parameters jsonb,                 -- the LLaMA-Factory config (or the W&B run config)
  description         text,
  agent_id            uuid references agents (id),
  base_model_id       uuid references base_models (id),
  dataset_id          uuid references datasets (id),  -- the first (main) dataset
  dataset_names       text[],                -- all datasets, in training order (each also has a datasets row)
  wandb_run_path      text,                  -- entity/project/run_id
  wandb_link          text,                  -- https://wandb.ai/<entity>/<project>/runs/<run_id>
  slurm_job_id        text,
  created_at          timestamptz not null default now(),
  updated_at          timestamptz not null default now()
);

do $$
declare t text;
begin
  foreach t in array array['agents', 'datasets', 'base_models', 'models'] loop
    execute format('create or replace trigger %I before update on %I '
                   'for each row execute function registry_touch_updated_at()', t || '_updated_at', t);
    -- Supabase: rows are readable with the anon key, writable only with the service-role key (bypasses RLS).
    execute format('alter table %I enable row level security', t);
    if (select count(*) from pg_roles where rolname in ('anon', 'authenticated')) = 2 then
      execute format('drop policy if exists %I on %I', t || '_read', t);
      execute format('create policy %I on %I for select to anon, authenticated using (true)', t || '_read', t);
    end if;
  end loop;
end $$;

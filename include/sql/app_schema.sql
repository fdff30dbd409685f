-- The sample application: the requirements' AI Model Validation Platform, reduced to the tables
-- whose loss the business impact analysis prices (users, projects, videos, annotations, detections).
CREATE TABLE IF NOT EXISTS users (
    id          bigint PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'annotator', 'reviewer', 'viewer')),
    created_at  timestamptz NOT NULL,
    last_login  timestamptz
);

CREATE TABLE IF NOT EXISTS projects (
    id          bigint PRIMARY KEY,
    owner_id    bigint NOT NULL REFERENCES users (id),
    name        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('active', 'paused', 'archived')),
    created_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS videos (
    id               bigint PRIMARY KEY,
    project_id       bigint NOT NULL REFERENCES projects (id),
    uploaded_by      bigint NOT NULL REFERENCES users (id),
    s3_key           text NOT NULL UNIQUE,
    duration_seconds numeric(8, 2) NOT NULL CHECK (duration_seconds > 0),
    size_bytes       bigint NOT NULL CHECK (size_bytes > 0),
    sha256           text NOT NULL,
    status           text NOT NULL CHECK (status IN ('uploaded', 'processing', 'processed', 'failed')),
    uploaded_at      timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS annotations (
    id          bigint PRIMARY KEY,
    video_id    bigint NOT NULL REFERENCES videos (id),
    author_id   bigint NOT NULL REFERENCES users (id),
    frame       integer NOT NULL CHECK (frame >= 0),
    label       text NOT NULL,
    bbox        jsonb NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS detections (
    id          bigint PRIMARY KEY,
    video_id    bigint NOT NULL REFERENCES videos (id),
    model       text NOT NULL,
    frame       integer NOT NULL CHECK (frame >= 0),
    label       text NOT NULL,
    confidence  real NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    detected_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS videos_project_idx ON videos (project_id);
CREATE INDEX IF NOT EXISTS annotations_video_idx ON annotations (video_id);
CREATE INDEX IF NOT EXISTS detections_video_idx ON detections (video_id);

-- The application's own writes (uploads, processing, annotations) take ids from sequences; the
-- generator's rows carry explicit ids and move the sequences past them.
CREATE SEQUENCE IF NOT EXISTS videos_id_seq OWNED BY videos.id;
CREATE SEQUENCE IF NOT EXISTS annotations_id_seq OWNED BY annotations.id;
CREATE SEQUENCE IF NOT EXISTS detections_id_seq OWNED BY detections.id;
ALTER TABLE videos ALTER COLUMN id SET DEFAULT nextval('videos_id_seq');
ALTER TABLE annotations ALTER COLUMN id SET DEFAULT nextval('annotations_id_seq');
ALTER TABLE detections ALTER COLUMN id SET DEFAULT nextval('detections_id_seq');

-- Logins: a scrypt hash per user who may sign in (the sample platform's synthetic transactions sign
-- in as a probe user kept here, so a restore that lost it fails its login check).
CREATE TABLE IF NOT EXISTS user_credentials (
    user_id       bigint PRIMARY KEY REFERENCES users (id),
    password_hash text NOT NULL CHECK (password_hash LIKE 'scrypt$%'),
    updated_at    timestamptz NOT NULL
);

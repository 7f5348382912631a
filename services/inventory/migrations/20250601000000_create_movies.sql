-- The movie catalogue. The length check mirrors the API's validation so that no other writer can
-- store a title the API would refuse.
CREATE TABLE movies (
    id          BIGSERIAL PRIMARY KEY,
    title       TEXT NOT NULL CHECK (char_length(title) BETWEEN 1 AND 255),
    description TEXT NULL
);

-- The version of each campaign in force: the document last applied, as JSON. A host starting
-- with a missing or refused campaign file runs this version until a valid file replaces it.
ALTER TABLE campaigns ADD COLUMN spec TEXT;

-- A party's country code and party id are CiStrings (credentials.asciidoc, CredentialsRole; types.asciidoc), matched
-- in any case, but published as stored: in the ClientInfo list and pushes, the OCPI-from/to headers the hub sends and
-- the admin API. An invitation typed in lower case was stored and published so, beside parties in capitals. They are
-- stored in capitals from now on (queries.sql, insert_party_roles); the ones stored before are brought in line.
UPDATE party_role SET country_code = upper(country_code), party_id = upper(party_id)
WHERE country_code <> upper(country_code) OR party_id <> upper(party_id);
